"""Tiny run configs for the engine and CLI tests (seconds per run on one CPU thread)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from segkn.config import Config, config_from_dict

TINY: dict[str, Any] = {
    "model": {"arch": "unet", "encoder": "knresnet18", "encoder_depth": 3, "decoder_channels": [16, 16, 16]},
    "data": {
        "type": "shapes",
        "shapes_size": [32, 32],
        "crop_size": [32, 32],
        "shapes_train_length": 8,
        "shapes_val_length": 3,
        "num_workers": 0,
    },
    "train": {
        "iterations": 4,
        "batch_size": 2,
        "optimizer": "adamw",
        "lr": 1e-3,
        "min_lr": 0.0,
        "val_interval": 2,
        "log_interval": 1,
        "checkpoint_interval": 2,
        "device": "cpu",
    },
    "seed": 0,
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_dict(tmp_path: Path, name: str = "run", **sections: Any) -> dict[str, Any]:
    """The tiny shapes config as a dict, with its runs under ``tmp_path/runs`` and sections merged in."""
    return merge(TINY, {"run_dir": str(tmp_path / "runs"), "name": name, **sections})


def tiny_config(tmp_path: Path, name: str = "run", **sections: Any) -> Config:
    """The tiny shapes config, validated and resolved."""
    return config_from_dict(tiny_dict(tmp_path, name, **sections))


def write_config(path: Path, d: dict[str, Any]) -> Path:
    """Write a config dict as YAML and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path
