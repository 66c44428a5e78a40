"""Every architecture and encoder that ``build_model`` makes, with its builder, defaults and rules.

Each name, default and rule is declared once and read from here by ``build_model`` and
``resolve_model_config`` (factory.py), by config validation and by the CLI. An encoder is a name in
its family's table of shapes (``knresnet.SPECS``, ``resnet.RESNET_SPECS``): adding ``resnet101`` is
one line there. A new family or architecture is one entry here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from segkn.models.base import SegmentationModel
from segkn.models.decoders import DeepLabV3, DeepLabV3Plus, UNet
from segkn.models.decoders.deeplabv3.decoder import ASPP_CHANNELS
from segkn.models.decoders.deeplabv3.decoder import MIN_ENCODER_DEPTH as DEEPLAB_MIN_ENCODER_DEPTH
from segkn.models.decoders.unet.decoder import UNET_DECODER_CHANNELS
from segkn.models.knresnet import SPECS as KNRESNET_SPECS
from segkn.models.knresnet import KNResNetEncoder
from segkn.models.resnet import RESNET_SPECS, ResNetEncoder
from segkn.models.weights import load_official_weights, load_torchvision_weights
from segkn.nn.blocks import NORMS

__all__ = [
    "ARCH_SPECS",
    "ENCODER_DEPTHS",
    "ENCODER_SPECS",
    "OUTPUT_STRIDES",
    "ArchSpec",
    "EncoderFamily",
    "arch_spec",
    "check_encoder_depth",
    "check_encoder_norm",
    "default_norm",
    "encoder_family",
]

OUTPUT_STRIDES = (8, 16, 32)  # what every encoder can be dilated to
ENCODER_DEPTHS = (1, 2, 3, 4, 5)  # stages an encoder may build (feature strides 2 .. 32)


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: its model class and what ``build_model`` takes when the config leaves it null.

    ``model(encoder, num_classes=, norm=, decoder_channels=, dropout_p=[, decoder_dropout=])``.
    ``decoder_channels`` is one width (an int) or one width per encoder stage, deepest first (a
    tuple, cut to the encoder depth).
    """

    model: Callable[..., SegmentationModel]
    output_stride: int
    decoder_channels: int | tuple[int, ...]
    min_encoder_depth: int = 1
    takes_decoder_dropout: bool = False

    @property
    def per_stage_channels(self) -> bool:
        return not isinstance(self.decoder_channels, int)

    def default_decoder_channels(self, encoder_depth: int) -> int | list[int]:
        """The decoder widths for an encoder of ``encoder_depth`` stages."""
        if isinstance(self.decoder_channels, int):
            return self.decoder_channels
        return list(self.decoder_channels[:encoder_depth])


ARCH_SPECS: dict[str, ArchSpec] = {
    "deeplabv3": ArchSpec(
        DeepLabV3,
        output_stride=16,
        decoder_channels=ASPP_CHANNELS,
        min_encoder_depth=DEEPLAB_MIN_ENCODER_DEPTH,
        takes_decoder_dropout=True,
    ),
    "deeplabv3plus": ArchSpec(
        DeepLabV3Plus,
        output_stride=16,
        decoder_channels=ASPP_CHANNELS,
        min_encoder_depth=DEEPLAB_MIN_ENCODER_DEPTH,
        takes_decoder_dropout=True,
    ),
    "unet": ArchSpec(UNet, output_stride=32, decoder_channels=UNET_DECODER_CHANNELS),
}


@dataclass(frozen=True)
class EncoderFamily:
    """Encoders made by one class: their names, builder and the norm words they take.

    ``build(name, norm=, in_channels=, depth=, output_stride=, dropout_p=, weights=)`` makes the
    encoder and loads ``weights`` (a file path, or None) into it.
    """

    names: tuple[str, ...]
    build: Callable[..., nn.Module]
    default_norm: str
    norms: tuple[str, ...]
    norm_reason: str = ""  # why only these norms, for the error message


def _build_knresnet(
    name: str,
    *,
    norm: str,
    in_channels: int,
    depth: int,
    output_stride: int,
    dropout_p: float,
    weights: str | None = None,
) -> nn.Module:
    assert norm == "kn", norm  # the family's rule, checked by resolve_model_config
    encoder = KNResNetEncoder(
        name, in_channels=in_channels, depth=depth, output_stride=output_stride, dropout_p=dropout_p
    )
    if weights:
        load_official_weights(encoder, weights, in_channels=in_channels)
    return encoder


def _build_resnet(
    name: str,
    *,
    norm: str,
    in_channels: int,
    depth: int,
    output_stride: int,
    dropout_p: float,
    weights: str | None = None,
) -> nn.Module:
    encoder = ResNetEncoder(
        name,
        norm=norm,
        in_channels=in_channels,
        depth=depth,
        output_stride=output_stride,
        dropout_p=dropout_p,
    )
    if weights:
        load_torchvision_weights(encoder, weights)
    return encoder


ENCODER_FAMILIES = (
    EncoderFamily(
        tuple(KNRESNET_SPECS),
        _build_knresnet,
        default_norm="kn",
        norms=("kn",),
        norm_reason="is kernel normalized by design",
    ),
    EncoderFamily(tuple(RESNET_SPECS), _build_resnet, default_norm="bn", norms=NORMS),
)
# encoder name -> the family that builds it
ENCODER_SPECS: dict[str, EncoderFamily] = {name: f for f in ENCODER_FAMILIES for name in f.names}

_T = TypeVar("_T")


def _lookup(table: Mapping[str, _T], value: object, key: str) -> _T:
    if value not in table:
        hint = difflib.get_close_matches(str(value), list(table), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"model.{key}: unknown {value!r}{did_you_mean}; valid choices: {', '.join(table)}")
    return table[value]  # type: ignore[index]


def arch_spec(arch: str) -> ArchSpec:
    """The spec of architecture ``arch``; a clear error (valid choices, did-you-mean) if unknown."""
    return _lookup(ARCH_SPECS, arch, "arch")


def encoder_family(encoder: str) -> EncoderFamily:
    """The family that builds ``encoder``; a clear error (valid choices, did-you-mean) if unknown."""
    return _lookup(ENCODER_SPECS, encoder, "encoder")


def default_norm(encoder: str) -> str:
    """The norm word ``encoder`` is built with unless told otherwise: kn for knresnet*, bn for resnet*."""
    return encoder_family(encoder).default_norm


def check_encoder_norm(encoder: str, norm: str) -> None:
    """Raise if ``encoder`` cannot be built with ``norm`` (knresnet* encoders need norm kn)."""
    family = encoder_family(encoder)
    if norm in family.norms:
        return
    others = [name for name, f in ENCODER_SPECS.items() if norm in f.norms]
    allowed = " or ".join(repr(n) for n in family.norms)
    raise ValueError(
        f"model.norm: {encoder} {family.norm_reason}, so norm must be {allowed} (got {norm!r}); use "
        f"encoder {'|'.join(others)} for a {norm} baseline, or model.decoder_norm to change the "
        "decoder's norm only"
    )


def check_encoder_depth(arch: str, depth: int) -> None:
    """Raise if ``depth`` is not an encoder depth that ``arch`` can take."""
    if depth not in ENCODER_DEPTHS:
        raise ValueError(
            f"model.encoder_depth: expected {ENCODER_DEPTHS[0]}..{ENCODER_DEPTHS[-1]}, got {depth!r}"
        )
    minimum = arch_spec(arch).min_encoder_depth
    if depth < minimum:
        others = [name for name, spec in ARCH_SPECS.items() if spec.min_encoder_depth <= depth]
        raise ValueError(
            f"model.encoder_depth: {arch} needs encoder_depth >= {minimum}, got {depth}; "
            f"archs that take depth {depth}: {', '.join(others)}"
        )
