"""Encoder weights from files: official KNResNet checkpoints and torchvision-layout ResNet state dicts.

Both are read by ``read_weights_file`` with ``torch.load(..., weights_only=True)``: a file that holds
anything but tensors is refused, never executed. A leading ``module.`` (DistributedDataParallel) is
dropped from every key, and an official 1x1 KN conv's ``<name>.conv1x1.weight`` is segkn's
``<name>.weight``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "WeightsError",
    "load_official_weights",
    "load_torchvision_weights",
    "official_key",
    "read_weights_file",
]

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file that cannot be used as asked."""


def official_key(key: str) -> str:
    """segkn key for a key of an official KNResNet checkpoint."""
    if key.startswith("module."):
        key = key[len("module.") :]
    return key.replace(".conv1x1.", ".")


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from an official ``{"model": state_dict}`` checkpoint or a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: encoder weights file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise WeightsError(
            f"{path}: cannot be read as weights (corrupt, truncated, or it holds objects other than "
            f"tensors, which are refused and never executed): {exc}"
        ) from exc
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors or {{'model': state_dict}}")
    return payload


def load_official_weights(model: nn.Module, path: str | Path, in_channels: int | None = None) -> list[str]:
    """Load an official ``knresnet{18,34,50}_imagenet.pth`` into a KNResNet or KNResNetEncoder.

    Every key the model has must come from the file with the same shape; the file's classifier
    (``fc.*``) is left out for an encoder, and so are the keys of stages that a shallower encoder
    does not build. Anything else that does not match is an error. For an encoder with
    in_channels != 3 the stem filters are adapted (summed for 1 channel, else cycled and rescaled).
    Returns the file's keys that were left out.
    """
    state = {official_key(k): v for k, v in read_weights_file(path).items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise WeightsError(
            f"{path}: {len(missing)} keys of {type(model).__name__} are not in the file, e.g. {missing[:5]}; "
            "is it a checkpoint of the same KNResNet depth?"
        )
    left_out = sorted(set(state) - set(own))
    depth = getattr(model, "_depth", 5)
    allowed = {"fc."} if depth == 5 else {"fc.", "trans_block", "res_block", "conv_block_f"}
    unexpected = [k for k in left_out if not any(k.startswith(p) for p in allowed)]
    if unexpected or (depth == 5 and any(not k.startswith("fc.") for k in left_out)):
        raise WeightsError(f"{path}: keys that {type(model).__name__} does not have: {left_out[:5]}")
    stem = "block0.0.weight"
    if in_channels is not None and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = _adapt_stem(state[stem], own[stem].shape[1])
    bad = [k for k in own if state[k].shape != own[k].shape]
    if bad:
        raise WeightsError(
            f"{path}: shape mismatch for {bad[:5]} (file {tuple(state[bad[0]].shape)} vs model "
            f"{tuple(own[bad[0]].shape)}); is it a checkpoint of the same KNResNet depth?"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    log.info("loaded %d tensors from %s (left out: %d)", len(own), path, len(left_out))
    return left_out


def _adapt_stem(weight: Tensor, in_channels: int) -> Tensor:
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_channels)


def load_torchvision_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a plain (torchvision-layout) ResNet state dict into a baseline encoder; ``fc.*`` is dropped."""
    state = {
        official_key(k): v
        for k, v in read_weights_file(path).items()
        if not k.endswith(("fc.weight", "fc.bias"))
    }
    own = encoder.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise WeightsError(
            f"{path}: does not match the {type(encoder).__name__} layout (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {bad[:3]})"
        )
    encoder.load_state_dict(state)
