import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segkn.engine.evaluator import evaluate, metrics_report, prediction_settings, write_report
from segkn.engine.loaders import ShardSampler, TrainSampler
from segkn.engine.metrics import ConfusionMatrix
from tests.engine.prediction_reference import PositionModel, pixelwise_model, top2_gap, tta_probabilities

from ._configs import tiny_config


class _Tiny(Dataset):
    """Images at half the size of their masks (as after an eval resize); masks hold 255 at the border."""

    def __init__(self, n=5, num_classes=4):
        g = torch.Generator().manual_seed(1)
        self.images = [torch.rand(3, 8 + i, 10, generator=g) for i in range(n)]
        self.masks = []
        for image in self.images:
            mask = torch.randint(0, num_classes, (2 * image.shape[1], 20), generator=g)
            mask[0] = 255
            self.masks.append(mask)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i]


def _reference_matrix(model, data, num_classes):
    cm = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for image, mask in data:
            logits = nn.functional.interpolate(model(image[None]), size=mask.shape, mode="bilinear")
            cm.update(logits.argmax(1)[0], mask)
    return cm.mat


@pytest.mark.parametrize("batch_size", [1, 3])
def test_evaluate_scores_at_the_mask_resolution(batch_size):
    model, data = pixelwise_model(), _Tiny()
    cm = evaluate(model, data, 4, batch_size=batch_size, progress=False)
    labelled = sum(int((m != 255).sum()) for m in data.masks)
    assert int(cm.mat.sum()) == labelled
    assert torch.equal(cm.mat, _reference_matrix(model, data, 4))


def test_evaluate_slide_flip_runs_and_keeps_model_mode(kn_model):
    kn_model.train()
    data = _Tiny(2, num_classes=3)
    cm = evaluate(kn_model, data, 3, mode="slide", crop_size=(6, 6), stride=(4, 4), flip=True, progress=False)
    assert kn_model.training
    kn_model.eval()
    assert int(cm.mat.sum()) == sum(int((m != 255).sum()) for m in data.masks)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_sample_once(world):
    shards = [list(ShardSampler(7, r, world)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))


def test_train_sampler_order_is_fixed_by_seed_and_epoch():
    a, b = TrainSampler(10, seed=3), TrainSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2, start=4)
    draws = list(a)
    assert list(b) == draws[4:] and len(b) == 6
    assert sorted(i for i, _ in draws) == list(range(10))
    a.set_epoch(3)
    assert list(a) != draws
    ranks = [TrainSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(2)
    per_rank = [list(r) for r in ranks]
    assert all(len(p) == 3 for p in per_rank)  # 10 // 3, the tail is dropped
    assert sorted(d for p in per_rank for d in p) == sorted(draws[:9])  # same draws and seeds, split up


def test_report_json_has_null_for_absent_classes(tmp_path):
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    report = metrics_report(cm, ["x", "y", "z"], step=7)
    write_report(report, tmp_path / "eval_val.json", cm.table(["x", "y", "z"]))
    loaded = json.loads((tmp_path / "eval_val.json").read_text())
    assert loaded["step"] == 7 and loaded["classes"][2] == {"name": "z", "iou": None, "acc": None}
    assert math.isclose(loaded["miou"], np.mean([0.5, 0.5]))
    assert "mIoU 50.00" in (tmp_path / "eval_val.txt").read_text()


def test_evaluate_scores_slide_and_tta_predictions():
    """Dataset scoring: slide + scales + flip, labels at twice the image size, against hand-made scores."""
    model, data = PositionModel(), _Tiny(3)
    crop, stride, scales = (6, 8), (4, 5), (0.75, 1.25)
    cm = evaluate(model, data, 4, mode="slide", crop_size=crop, stride=stride, scales=scales, flip=True,
                  progress=False)  # fmt: skip
    expected = ConfusionMatrix(4)
    for image, mask in data:
        probs = tta_probabilities(model, image[None], tuple(mask.shape), scales, True, crop, stride)
        assert top2_gap(probs).min() > 1e-4  # no near-ties: argmax is well defined
        expected.update(probs.argmax(1)[0], mask)
    assert torch.equal(cm.mat, expected.mat)
    # and the plain whole-image scores differ, so the settings were applied
    plain = evaluate(model, data, 4, progress=False)
    assert not torch.equal(plain.mat, cm.mat)


def test_evaluate_takes_its_settings_by_keyword():
    model, data = pixelwise_model(), _Tiny(2)
    with pytest.raises(TypeError, match="positional"):
        evaluate(model, data, 4, "cpu", "slide")
    cfg = tiny_config(Path("unused"), eval={"mode": "slide", "crop_size": [6, 6], "scales": [0.5, 1.0]})
    settings = prediction_settings(cfg)
    assert list(settings) == ["mode", "crop_size", "stride", "scales", "flip"]
    assert settings == {key: getattr(cfg.eval, key) for key in settings} and settings["mode"] == "slide"
    from_config = evaluate(model, data, 4, **settings, progress=False)
    by_hand = evaluate(
        model,
        data,
        4,
        mode="slide",
        crop_size=[6, 6],
        stride=cfg.eval.stride,
        scales=[0.5, 1.0],
        progress=False,
    )
    assert torch.equal(from_config.mat, by_hand.mat)
