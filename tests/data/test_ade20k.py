from pathlib import Path

import numpy as np
import pytest
import torch

from segkn.config import load_config
from segkn.data import ADE20KDataset, DatasetError, build_dataset, build_transform, data_settings
from segkn.data.ade20k import reduce_zero_label
from segkn.data.check import check_files
from segkn.data.io import read_mask
from segkn.data.registry import dataset_label_ids
from tests.data.builders import make_ade20k_tree, write_label_png
from tests.engine._configs import tiny_config


def test_label_0_is_ignored_and_k_becomes_k_minus_1() -> None:
    stored = np.array([[0, 1, 2, 75], [149, 150, 255, 0]])
    np.testing.assert_array_equal(reduce_zero_label(stored), [[255, 0, 1, 74], [148, 149, 255, 255]])
    assert reduce_zero_label(np.arange(256)).tolist() == [255, *range(150), *[255] * 105]


def test_classes_and_palette() -> None:
    assert len(ADE20KDataset.classes) == len(ADE20KDataset.palette) == 150
    assert len(set(ADE20KDataset.classes)) == 150
    assert ADE20KDataset.classes[:4] == ("wall", "building", "sky", "floor")
    assert ADE20KDataset.classes[12] == "person" and ADE20KDataset.classes[149] == "flag"
    assert ADE20KDataset.palette[0] == (120, 120, 120) and ADE20KDataset.palette[149] == (92, 0, 255)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ADE20KDataset.palette)
    assert dataset_label_ids("ade20k") == list(range(1, 151))  # `--ids dataset`: the stored labels


def test_reads_the_release_layout(ade20k_root: Path) -> None:
    for root in (ade20k_root, ade20k_root.parent):  # the folder itself or the one it was unpacked into
        for split, folder_split in (("train", "training"), ("val", "validation")):
            assert len(ADE20KDataset(root, split)) == len(ADE20KDataset(root, folder_split))
    dataset = build_dataset({"type": "ade20k", "root": str(ade20k_root)}, "validation")
    assert len(dataset) == 2 and dataset.num_classes == 150 and dataset.name(0) == "ADE_val_00000001"
    stored = np.zeros((24, 32), dtype=np.uint8)
    stored[:, 8:] = 1
    stored[:, 16:] = 150
    stored[:, 24:] = 42
    write_label_png(dataset.samples[0].mask, stored)
    image, mask = dataset[0]
    assert image.shape == (24, 32, 3) and mask.dtype == np.int64
    assert (mask[:, :8] == 255).all() and (mask[:, 8:16] == 0).all()
    assert (mask[:, 16:24] == 149).all() and (mask[:, 24:] == 41).all()
    check_files(dataset, progress=False)


def test_testing_split_may_have_no_annotations(tmp_path: Path) -> None:
    ade = make_ade20k_tree(tmp_path, splits={"testing": 2})
    dataset = ADE20KDataset(ade, "test")
    assert (dataset[1][1] == 255).all()


def test_problems_name_the_file(ade20k_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"split 'testing' not found.*splits present: training, valid"):
        ADE20KDataset(ade20k_root, "testing")
    with pytest.raises(DatasetError, match="no ADE20K images found at"):
        ADE20KDataset(tmp_path, "val")
    mask = ade20k_root / "annotations" / "validation" / "ADE_val_00000002.png"
    write_label_png(mask, np.full((24, 32), 151, dtype=np.uint8))
    dataset = ADE20KDataset(ade20k_root, "val")
    with pytest.raises(DatasetError, match=r"ADE_val_00000002\.png has label values 151; ADE20K masks hold"):
        check_files(dataset, progress=False)
    mask.unlink()
    with pytest.raises(
        DatasetError, match=r"ADE_val_00000002\.jpg has no mask: expected \S+ADE_val_00000002\.png"
    ):
        ADE20KDataset(ade20k_root, "val")


def test_tiny_train_and_eval(tmp_path: Path) -> None:
    from segkn.engine.evaluator import evaluate_checkpoint
    from segkn.engine.trainer import train

    root = make_ade20k_tree(tmp_path / "ade")
    cfg = tiny_config(
        tmp_path,
        data={"type": "ade20k", "root": str(root), "train_split": "training", "val_split": "validation",
              "crop_size": [16, 16]},
        train={"iterations": 2},
    )  # fmt: skip
    train(cfg)
    run = tmp_path / "runs" / "run"
    saved = load_config(run / "config.yaml")
    assert saved.model.num_classes == 150
    report, table = evaluate_checkpoint(saved, run / "best.pth", progress=False)
    assert [c["name"] for c in report["classes"][:2]] == ["wall", "building"] and len(
        report["classes"]
    ) == 150
    stored = [read_mask(p) for p in sorted((root / "annotations" / "validation").glob("*.png"))]
    assert report["pixels"] == sum(int((m != 0).sum()) for m in stored) < 2 * 24 * 32  # "other" left out
    assert 0.0 <= report["miou"] <= 1.0 and "wall" in table


def test_recipes_evaluate_as_mmsegmentation() -> None:
    recipes = sorted((Path(__file__).resolve().parents[2] / "configs" / "ade20k").glob("*.yaml"))
    assert len(recipes) == 6
    for path in recipes:
        data = load_config(path).data
        assert (data.eval_resize, data.eval_keep_ratio) == ([2048, 512], True), path.name
        transform = build_transform(data_settings(data), train=False)
        image, mask = transform(np.zeros((375, 500, 3), np.uint8), np.zeros((375, 500), np.int64))
        assert image.shape == (3, 512, 683) and mask.shape == (375, 500), path.name


def test_evaluation_resizes_keeping_the_ratio_and_scores_at_the_label_size(tmp_path: Path) -> None:
    from segkn.engine.evaluator import evaluate, prediction_settings
    from segkn.engine.loaders import build_split

    root = make_ade20k_tree(tmp_path / "ade", splits={"validation": 2}, size=(24, 40))
    cfg = tiny_config(
        tmp_path, data={"type": "ade20k", "root": str(root), "eval_resize": [64, 16], "eval_keep_ratio": True}
    )
    dataset = build_split(cfg, "validation", train=False)
    seen = []

    class Walls(torch.nn.Module):  # predicts class 0 (wall) everywhere, noting the input sizes
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))
            return torch.nn.functional.pad(torch.ones_like(x[:, :1]), (0, 0, 0, 0, 0, 149))

    cm = evaluate(Walls(), dataset, 150, **prediction_settings(cfg), progress=False)
    assert seen == [(16, 27), (16, 27)]  # 24x40 fitted into long <= 64, short <= 16
    stored = [read_mask(p) for p in sorted((root / "annotations" / "validation").glob("*.png"))]
    assert cm.mat.sum() == sum(int((m != 0).sum()) for m in stored)  # every labelled pixel, as stored
    walls = sum(int((m == 1).sum()) for m in stored)  # stored label 1 = class 0
    assert cm.mat[0, 0] == walls and cm.mat[:, 1:].sum() == 0
