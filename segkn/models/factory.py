"""build_model: the one way segkn models are made, from a plain mapping (a config's ``model`` part)."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from segkn.nn.blocks import NORMS, check_norm

log = logging.getLogger(__name__)

ARCHS = ("deeplabv3", "deeplabv3plus", "unet")
ENCODERS = ("knresnet18", "knresnet34", "knresnet50", "resnet18", "resnet34", "resnet50")
DEFAULTS: dict[str, Any] = {
    "arch": "deeplabv3plus",
    "encoder": "knresnet18",
    "encoder_depth": 5,
    "norm": "kn",
    "decoder_norm": None,
    "num_classes": None,
    "output_stride": None,  # None: the architecture's default (OUTPUT_STRIDES)
    "dropout_p": 0.05,
    "decoder_dropout": 0.1,
    "encoder_weights": None,
    "in_channels": 3,
    "decoder_channels": None,  # None: the architecture's default (DECODER_CHANNELS)
}
OUTPUT_STRIDES = {"deeplabv3": 16, "deeplabv3plus": 16, "unet": 32}
DECODER_CHANNELS: dict[str, Any] = {"deeplabv3": 256, "deeplabv3plus": 256, "unet": (256, 128, 64, 32, 16)}


def _choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"model.{key}: unknown {value!r}{did_you_mean}; valid choices: {', '.join(choices)}")
    return value


def resolve_model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The full model mapping: defaults filled in, every word and number checked."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown}; valid keys: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    _choice(out["arch"], ARCHS, "arch")
    _choice(out["encoder"], ENCODERS, "encoder")
    _choice(out["norm"], NORMS, "norm")
    if out["decoder_norm"] is None:
        out["decoder_norm"] = out["norm"]
    check_norm(out["decoder_norm"], "model.decoder_norm")
    if out["encoder"].startswith("knresnet") and out["norm"] != "kn":
        raise ValueError(
            f"model.norm: {out['encoder']} is kernel normalized by design, so norm must be 'kn' "
            f"(got {out['norm']!r}); use encoder resnet18|34|50 for a {out['norm']} baseline, or "
            "model.decoder_norm to change the decoder's norm only"
        )
    if not isinstance(out["num_classes"], int) or out["num_classes"] < 1:
        raise ValueError(f"model.num_classes: expected a positive integer, got {out['num_classes']!r}")
    if out["output_stride"] is None:
        out["output_stride"] = OUTPUT_STRIDES[out["arch"]]
    if out["output_stride"] not in (8, 16, 32):
        raise ValueError(f"model.output_stride: expected 8, 16 or 32, got {out['output_stride']!r}")
    if out["encoder_depth"] not in (1, 2, 3, 4, 5):
        raise ValueError(f"model.encoder_depth: expected 1..5, got {out['encoder_depth']!r}")
    if out["decoder_channels"] is None:
        default = DECODER_CHANNELS[out["arch"]]
        out["decoder_channels"] = list(default[: out["encoder_depth"]]) if out["arch"] == "unet" else default
    channels = out["decoder_channels"]
    if out["arch"] == "unet" and not isinstance(channels, list | tuple):
        raise ValueError(
            f"model.decoder_channels: unet takes a list, one value per encoder stage, got {channels}"
        )
    if out["arch"] == "unet" and len(channels) != out["encoder_depth"]:
        raise ValueError(
            f"model.decoder_channels: unet needs one value per encoder stage "
            f"({out['encoder_depth']}), got {channels}"
        )
    if out["arch"] != "unet" and isinstance(channels, list | tuple):
        raise ValueError(f"model.decoder_channels: {out['arch']} takes one integer, got {channels}")
    if out["arch"] == "deeplabv3plus" and out["encoder_depth"] < 3:
        raise ValueError("model.encoder_depth: deeplabv3plus needs encoder_depth >= 3")
    if not 0.0 <= float(out["dropout_p"]) < 1.0 or not 0.0 <= float(out["decoder_dropout"]) < 1.0:
        raise ValueError("model.dropout_p and model.decoder_dropout must be in [0, 1)")
    return out


def build_encoder(cfg: Mapping[str, Any]) -> nn.Module:
    """The encoder named by a resolved model mapping, with its weights file loaded if one is given."""
    from segkn.models.knresnet import KNResNetEncoder, load_official_weights
    from segkn.models.resnet import ResNetEncoder

    output_stride = min(cfg["output_stride"], 2 ** cfg["encoder_depth"])
    common = dict(in_channels=cfg["in_channels"], depth=cfg["encoder_depth"], dropout_p=cfg["dropout_p"])
    if cfg["encoder"].startswith("knresnet"):
        encoder = KNResNetEncoder(cfg["encoder"], output_stride=output_stride, **common)
        if cfg["encoder_weights"]:
            load_official_weights(encoder, cfg["encoder_weights"], in_channels=cfg["in_channels"])
    else:
        encoder = ResNetEncoder(cfg["encoder"], norm=cfg["norm"], **common)
        if cfg["encoder_weights"]:
            load_encoder_state(encoder, cfg["encoder_weights"])
        if output_stride != 32:
            encoder.make_dilated(output_stride)
    return encoder


def load_encoder_state(encoder: nn.Module, path: str) -> None:
    """Load a plain (torchvision-layout) ResNet state dict into a baseline encoder; ``fc.*`` is dropped."""
    from segkn.models.knresnet import WeightsError, official_key, read_weights_file

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


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """A segmentation model from a mapping with arch, encoder, norm, num_classes, ... (see DEFAULTS)."""
    from segkn.models.decoders import DeepLabV3, DeepLabV3Plus, UNet

    cfg = resolve_model_config(cfg)
    encoder = build_encoder(cfg)
    common = dict(num_classes=cfg["num_classes"], norm=cfg["decoder_norm"], dropout_p=cfg["dropout_p"])
    if cfg["arch"] == "unet":
        channels = cfg["decoder_channels"] or (256, 128, 64, 32, 16)
        model = UNet(encoder, decoder_channels=tuple(channels), **common)
    else:
        arch = DeepLabV3 if cfg["arch"] == "deeplabv3" else DeepLabV3Plus
        model = arch(
            encoder,
            decoder_channels=cfg["decoder_channels"] or 256,
            decoder_dropout=cfg["decoder_dropout"],
            **common,
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
