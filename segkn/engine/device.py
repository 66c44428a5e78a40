"""Device and mixed-precision choices from the config's words."""

from __future__ import annotations

import torch

from segkn.config import ConfigError

__all__ = ["amp_dtype", "resolve_device"]


def resolve_device(word: str, local_rank: int = 0) -> torch.device:
    """The device for ``train.device`` (auto | cpu | cuda | cuda:N); ``cuda`` is this process's local GPU."""
    if word == "auto":
        word = "cuda" if torch.cuda.is_available() else "cpu"
    if word.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {word!r} asked for, but no CUDA device is available; use cpu")
        return torch.device(word if ":" in word else f"cuda:{local_rank}")
    return torch.device(word)


def amp_dtype(setting: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` (null: bf16 on CUDA when supported, else off)."""
    if setting is None:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 needs a CUDA device; use bf16 or off on CPU")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]
