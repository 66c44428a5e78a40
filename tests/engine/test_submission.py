from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segkn.data import CityscapesDataset, DatasetError, build_transform
from segkn.engine.submission import export_cityscapes_submission
from tests.data.builders import make_cityscapes_tree


class ConstantModel(nn.Module):
    """Predicts train id 13 (car, label id 26) everywhere, at any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
        logits[:, 13] = 1.0
        return logits


def test_submission_pngs_are_found_and_read_by_the_cityscapes_pattern(tmp_path):
    root = make_cityscapes_tree(tmp_path / "cs", splits=("val",), size=(48, 96))
    dataset = CityscapesDataset(root, "val", transform=build_transform({"normalize": "none"}, train=False))
    out = tmp_path / "results"
    written = export_cityscapes_submission(ConstantModel(), dataset, out, torch.device("cpu"), progress=False)
    assert len(written) == len(dataset) == 4
    # csEvalPixelLevelSemanticLabeling: prediction of <city>_<seq>_<frame>_gtFine_labelIds.png is the one
    # file matching *<city>_<seq>_<frame>*.png in the results folder
    for gt in sorted(Path(root, "gtFine", "val").rglob("*_gtFine_labelIds.png")):
        city, seq, frame = gt.name.split("_")[:3]
        matches = list(out.glob(f"*{city}_{seq}_{frame}*.png"))
        assert len(matches) == 1
        pred = cv2.imread(str(matches[0]), cv2.IMREAD_UNCHANGED)
        assert pred.dtype == np.uint8 and pred.shape == cv2.imread(str(gt), cv2.IMREAD_UNCHANGED).shape[:2]
        assert np.all(pred == 26)
    assert not list(out.glob("*.tmp*")) and all(p.suffix == ".png" for p in out.iterdir())


def test_a_submission_that_stops_on_a_bad_image_leaves_no_pngs(tmp_path):
    root = make_cityscapes_tree(tmp_path / "cs", splits=("val",), size=(48, 96))
    images = sorted((root / "leftImg8bit" / "val").rglob("*.png"))
    images[2].write_bytes(b"not an image")  # the third of four: two PNGs would be written before it
    dataset = CityscapesDataset(root, "val", transform=build_transform({"normalize": "none"}, train=False))
    results = tmp_path / "results"
    with pytest.raises(DatasetError, match="cannot read image"):
        export_cityscapes_submission(ConstantModel(), dataset, results, torch.device("cpu"), progress=False)
    assert not results.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cs"]  # no temporary folder either

    # into an existing folder: its files stay until the submission is complete, then same names are replaced
    results.mkdir()
    (results / "notes.txt").write_text("mine")
    (results / images[0].name).write_bytes(b"old")
    with pytest.raises(DatasetError):
        export_cityscapes_submission(ConstantModel(), dataset, results, torch.device("cpu"), progress=False)
    assert sorted(p.name for p in results.iterdir()) == sorted(["notes.txt", images[0].name])
    assert (results / images[0].name).read_bytes() == b"old"
    images[2].unlink()
    good = CityscapesDataset(root, "val", transform=build_transform({"normalize": "none"}, train=False))
    written = export_cityscapes_submission(
        ConstantModel(), good, results, torch.device("cpu"), progress=False
    )
    assert sorted(p.name for p in results.iterdir()) == sorted(["notes.txt", *(p.name for p in written)])
    assert np.all(cv2.imread(str(results / images[0].name), cv2.IMREAD_UNCHANGED) == 26)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
