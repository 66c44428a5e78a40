"""segkn metadata of ONNX exports, built from a model without exporting it."""

from __future__ import annotations

from importlib import metadata as package_metadata

import pytest
import torch

import segkn
from segkn.inference.export import export_onnx
from segkn.inference.metadata import build_metadata, model_config
from segkn.models import build_model


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return build_model({"arch": "unet", "encoder": "resnet18", "norm": "bn", "num_classes": 19})


def test_cityscapes_metadata_has_label_ids(unet) -> None:
    meta = build_metadata(unet, {"config": {"data": {"type": "cityscapes"}}})
    assert meta["label_ids"][:3] == [7, 8, 11] and len(meta["label_ids"]) == 19
    assert build_metadata(unet)["label_ids"] is None


def test_version_comes_from_the_package_metadata(unet) -> None:
    installed = package_metadata.version("segkn")
    assert build_metadata(unet)["version"] == installed
    assert segkn.__version__ == installed


def test_metadata_refuses_foreign_models_and_bad_sizes(unet, tmp_path) -> None:
    with pytest.raises(ValueError, match="not a segkn model"):
        model_config(torch.nn.Conv2d(3, 2, 1))
    with pytest.raises(ValueError, match=r"sample_size: expected positive \(height, width\), got \(0, 4\)"):
        export_onnx(unet, tmp_path / "unused.onnx", sample_size=(0, 4))
    assert not (tmp_path / "unused.onnx").exists()
