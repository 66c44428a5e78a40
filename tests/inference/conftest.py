"""Fixtures for the inference tests: tiny checkpoints written in the segkn format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from segkn.config import config_from_dict
from segkn.data.base import default_palette
from segkn.engine.checkpoint import save_checkpoint
from segkn.models import build_model
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
