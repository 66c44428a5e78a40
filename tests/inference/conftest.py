"""Fixtures for the inference tests: tiny checkpoints written in the segkn format, one shared ONNX export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from segkn.config import config_from_dict
from segkn.data.base import default_palette
from segkn.engine.checkpoint import save_checkpoint
from segkn.inference.export import export_onnx
from segkn.models import build_model, default_norm
from tests.engine._configs import TINY, merge


def write_tiny_checkpoint(path: Path, seed: int = 0, **sections: Any) -> Path:
    """A segkn checkpoint of the tiny shapes U-Net (3 classes, random weights) with ``sections`` merged in."""
    changes = merge({"model": {"num_classes": 3}}, sections)
    cfg = config_from_dict(merge(TINY, changes))
    torch.manual_seed(seed)
    model = build_model(cfg.model.to_dict())
    classes = [f"class{i}" for i in range(cfg.model.num_classes)]
    payload = {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "classes": classes,
        "palette": [list(c) for c in default_palette(len(classes))],
        "step": 7,
    }
    save_checkpoint(path, payload)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_checkpoint(name="tiny.pth", **config sections)`` writes a checkpoint into tmp_path."""

    def make(name: str = "tiny.pth", **sections: Any) -> Path:
        return write_tiny_checkpoint(tmp_path / name, **sections)

    return make


# --- ONNX exports ---------------------------------------------------------------------------------

SAMPLE = (64, 96)
NUM_CLASSES = 4


def kind_config(arch: str, encoder: str, norm: str, **extra: Any) -> dict[str, Any]:
    """The model mapping of one grid point; KNResNet encoders are KN by design, so for them the norm
    word goes to the decoder."""
    if default_norm(encoder) == "kn":
        norms = {"norm": "kn", "decoder_norm": norm}
    else:
        norms = {"norm": norm}
    return {"arch": arch, "encoder": encoder, **norms, "num_classes": NUM_CLASSES, **extra}


SHARED_KIND = ("deeplabv3plus", "resnet18", "gn")
SHARED_META = {
    "classes": ["road", "car", "sky", "person"],
    "palette": [[128, 64, 128], [0, 0, 142], [70, 130, 180], [220, 20, 60]],
    "normalize": "imagenet",
    "config": {"model": {"arch": "deeplabv3plus"}, "data": {"type": "folder"}, "eval": {"mode": "slide"}},
    "checkpoint_step": 12,
}


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """One export of SHARED_KIND with SHARED_META, for the export and verification tests (which leave
    the model as they found it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(kind_config(*SHARED_KIND))
        path = export_onnx(
            model, tmp_path_factory.mktemp("onnx") / "shared.onnx", sample_size=SAMPLE, metadata=SHARED_META
        )
    finally:
        torch.set_num_threads(threads)
    return model, path
