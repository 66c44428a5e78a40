"""build_model: the one way segkn models are made, from a plain mapping (a config's ``model`` part).

Names, defaults and rules of architectures and encoders come from ``segkn.models.registry``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from segkn.models.decoders.deeplabv3.decoder import DECODER_DROPOUT
from segkn.models.registry import (
    ARCH_SPECS,
    ENCODER_SPECS,
    OUTPUT_STRIDES,
    arch_spec,
    check_encoder_depth,
    check_encoder_norm,
    encoder_family,
)
from segkn.nn import KN_DROPOUT_P
from segkn.nn.blocks import NORMS, check_norm

log = logging.getLogger(__name__)

ARCHS = tuple(ARCH_SPECS)
ENCODERS = tuple(ENCODER_SPECS)
DEFAULTS: dict[str, Any] = {
    "arch": "deeplabv3plus",
    "encoder": "knresnet18",
    "encoder_depth": 5,
    "norm": "kn",
    "decoder_norm": None,  # None: same as norm
    "num_classes": None,
    "output_stride": None,  # None: the architecture's default (registry)
    "dropout_p": KN_DROPOUT_P,
    "decoder_dropout": DECODER_DROPOUT,
    "encoder_weights": None,
    "in_channels": 3,
    "decoder_channels": None,  # None: the architecture's default (registry), cut to encoder_depth
}


def _choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"model.{key}: unknown {value!r}{did_you_mean}; valid choices: {', '.join(choices)}")
    return value


def resolve_model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The full model mapping: defaults filled in, every word and number checked.

    Errors are ValueErrors whose message starts with the key, e.g. ``model.encoder_depth: ...``.
    """
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown}; valid keys: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    arch = arch_spec(out["arch"])
    encoder_family(out["encoder"])
    _choice(out["norm"], NORMS, "norm")
    if out["decoder_norm"] is None:
        out["decoder_norm"] = out["norm"]
    check_norm(out["decoder_norm"], "model.decoder_norm")
    check_encoder_norm(out["encoder"], out["norm"])
    if not isinstance(out["num_classes"], int) or out["num_classes"] < 1:
        raise ValueError(f"model.num_classes: expected a positive integer, got {out['num_classes']!r}")
    if out["output_stride"] is None:
        out["output_stride"] = arch.output_stride
    if out["output_stride"] not in OUTPUT_STRIDES:
        choices = ", ".join(map(str, OUTPUT_STRIDES))
        raise ValueError(f"model.output_stride: expected one of {choices}, got {out['output_stride']!r}")
    check_encoder_depth(out["arch"], out["encoder_depth"])
    channels = out["decoder_channels"]
    if channels is None:
        out["decoder_channels"] = arch.default_decoder_channels(out["encoder_depth"])
    elif arch.per_stage_channels and not isinstance(channels, list | tuple):
        raise ValueError(
            f"model.decoder_channels: {out['arch']} takes a list, one value per encoder stage, got {channels}"
        )
    elif arch.per_stage_channels and len(channels) != out["encoder_depth"]:
        raise ValueError(
            f"model.decoder_channels: {out['arch']} needs one value per encoder stage "
            f"({out['encoder_depth']}), got {channels}"
        )
    elif not arch.per_stage_channels and not isinstance(channels, int):
        raise ValueError(f"model.decoder_channels: {out['arch']} takes one integer, got {channels}")
    if not 0.0 <= float(out["dropout_p"]) < 1.0 or not 0.0 <= float(out["decoder_dropout"]) < 1.0:
        raise ValueError("model.dropout_p and model.decoder_dropout must be in [0, 1)")
    return out


def build_encoder(cfg: Mapping[str, Any]) -> nn.Module:
    """The encoder named by a resolved model mapping, with its weights file loaded if one is given."""
    return encoder_family(cfg["encoder"]).build(
        cfg["encoder"],
        norm=cfg["norm"],
        in_channels=cfg["in_channels"],
        depth=cfg["encoder_depth"],
        output_stride=cfg["output_stride"],
        dropout_p=cfg["dropout_p"],
        weights=cfg["encoder_weights"],
    )


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """A segmentation model from a mapping with arch, encoder, norm, num_classes, ... (see DEFAULTS)."""
    cfg = resolve_model_config(cfg)
    arch = arch_spec(cfg["arch"])
    extra = {"decoder_dropout": cfg["decoder_dropout"]} if arch.takes_decoder_dropout else {}
    channels = cfg["decoder_channels"]
    model = arch.model(
        build_encoder(cfg),
        num_classes=cfg["num_classes"],
        norm=cfg["decoder_norm"],
        decoder_channels=tuple(channels) if arch.per_stage_channels else channels,
        dropout_p=cfg["dropout_p"],
        **extra,
    )
    model.config = cfg
    log.info(
        "built %s/%s (%s): %.2fM parameters",
        cfg["arch"],
        cfg["encoder"],
        cfg["norm"],
        count_parameters(model) / 1e6,
    )
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
