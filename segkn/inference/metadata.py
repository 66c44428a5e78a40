"""The segkn metadata of an ONNX export: what the file records about its model, checkpoint and input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from segkn.data.registry import dataset_label_ids
from segkn.inference.runtime import FORMAT, FORMAT_VERSION, JSON_KEYS, METADATA_KEYS, PREFIX
from segkn.nn.geometry import to_pair
from segkn.version import package_version

__all__ = [
    "build_metadata",
    "checkpoint_metadata",
    "checkpoint_sample_size",
    "encode_metadata",
    "model_config",
    "normalize_metadata",
]


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``config`` mapping of a segkn model; ValueError for any other module."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, Mapping) or "num_classes" not in cfg or not hasattr(model, "size_divisor"):
        raise ValueError(
            f"{type(model).__name__} is not a segkn model (no .config / .size_divisor); build it with "
            "segkn.models.build_model"
        )
    return dict(cfg)


def normalize_metadata(value: Any) -> dict[str, list[float]] | None:
    """``normalize`` metadata from a config word, a {mean, std} mapping or a (mean, std) pair."""
    from segkn.data.transforms import resolve_normalize

    if isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value[0], (int, float)):
        pair: tuple[Any, Any] | None = (value[0], value[1])
    else:
        pair = resolve_normalize(value)
    if pair is None:
        return None
    mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in pair)
    # shortest text of the float32 values that the transforms use: 0.485, not 0.48500001
    return {
        "mean": [float(str(np.float32(v))) for v in mean],
        "std": [float(str(np.float32(v))) for v in std],
    }


def _input_sentence(normalize: dict[str, list[float]] | None, dtype: str) -> str:
    text = f"{dtype} NCHW RGB, pixel / 255"
    return text + (", then (x - mean) / std" if normalize else "")


def _label_ids(config: Mapping[str, Any] | None, num_classes: int) -> list[int] | None:
    data = (config or {}).get("data") or {}
    ids = dataset_label_ids(str(data.get("type", "")))
    return ids if ids is not None and len(ids) == num_classes else None


def build_metadata(
    model: nn.Module, values: Mapping[str, Any] | None = None, *, dtype: str = "float32"
) -> dict[str, Any]:
    """Decoded metadata for ``model``: ``values`` (keys as in METADATA_KEYS, with or without the
    ``segkn.`` prefix) over defaults taken from the model (its classes are named by number, its
    normalization is the training default for its norm: none for kn, else ImageNet)."""
    from segkn.data.base import default_palette

    cfg = model_config(model)
    given = {str(k).removeprefix(PREFIX): v for k, v in (values or {}).items()}
    unknown = sorted(set(given) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"metadata: unknown key(s) {unknown}; valid keys: {', '.join(METADATA_KEYS)}")
    num_classes = int(cfg["num_classes"])
    encoder = getattr(model, "encoder", None)
    output_stride = int(getattr(encoder, "output_stride", cfg.get("output_stride", 32)))
    config = given.get("config")
    if "normalize" in given:
        normalize = normalize_metadata(given["normalize"])
    else:
        data_cfg = (config or {}).get("data") or {}
        word = data_cfg.get("normalize") or ("none" if cfg["norm"] == "kn" else "imagenet")
        normalize = normalize_metadata(word)
    meta: dict[str, Any] = {
        "version": package_version(),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": [f"class_{i}" for i in range(num_classes)],
        "palette": [list(c) for c in default_palette(num_classes)],
        "checkpoint_sha256": "",
        "checkpoint_step": None,
        "config": None,
        "label_ids": _label_ids(config, num_classes),
        **given,
        "normalize": normalize,
        "input": _input_sentence(normalize, dtype),
        "output_stride": output_stride,
        "size_divisor": int(model.size_divisor),
        "dtype": dtype,
    }
    if len(meta["classes"]) != num_classes or len(meta["palette"]) < num_classes:
        raise ValueError(
            f"metadata: the model has {num_classes} classes but {len(meta['classes'])} names and "
            f"{len(meta['palette'])} palette colours were given"
        )
    meta["classes"] = [str(c) for c in meta["classes"]]
    meta["palette"] = [[int(v) for v in c] for c in meta["palette"]]
    return meta


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` entries of the ONNX file: prefixed keys, JSON or plain text values."""
    return {
        PREFIX + key: json.dumps(meta[key])
        if key in JSON_KEYS
        else str(meta[key] if meta[key] is not None else "")
        for key in METADATA_KEYS
    }


def checkpoint_metadata(ckpt: Mapping[str, Any], sha256: str) -> dict[str, Any]:
    """Metadata values that a loaded segkn checkpoint supplies (classes, palette, config, ...)."""
    from segkn.config import config_from_dict

    config = ckpt["config"]
    resolved = config_from_dict(config)
    return {
        "classes": list(ckpt["classes"]),
        "palette": [list(c) for c in ckpt["palette"]],
        "normalize": resolved.data.normalize,
        "config": resolved.to_dict(),
        "checkpoint_sha256": sha256,
        "checkpoint_step": ckpt.get("step"),
    }


def checkpoint_sample_size(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """The export sample size of a checkpoint: its ``data.crop_size`` (512 x 512 without one)."""
    crop = ((ckpt.get("config") or {}).get("data") or {}).get("crop_size") or (512, 512)
    return to_pair(crop, "sample_size", positive=True)
