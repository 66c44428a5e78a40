"""DeepLabV3 and DeepLabV3+: an encoder, an ASPP decoder and a 1x1 conv head to the class logits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from segkn.models.base import SegmentationModel
from segkn.models.decoders.deeplabv3.decoder import (
    ASPP_CHANNELS,
    DECODER_DROPOUT,
    DeepLabV3Decoder,
    DeepLabV3PlusDecoder,
    default_atrous_rates,
)
from segkn.nn import KN_DROPOUT_P


class DeepLabV3(SegmentationModel):
    """DeepLabV3 on an smp-contract encoder; logits at the encoder's output stride, upsampled to the input.

    ``norm`` and ``dropout_p`` (the KN statistics dropout) apply to the decoder; the encoder keeps
    its own. ``atrous_rates=None`` picks them from ``encoder.output_stride`` (see
    ``default_atrous_rates``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        norm: str = "kn",
        decoder_channels: int = ASPP_CHANNELS,
        atrous_rates: Sequence[int] | None = None,
        dropout_p: float = KN_DROPOUT_P,
        decoder_dropout: float = DECODER_DROPOUT,
    ) -> None:
        if atrous_rates is None:
            atrous_rates = default_atrous_rates(encoder.output_stride)
        decoder = DeepLabV3Decoder(
            encoder.out_channels,
            out_channels=decoder_channels,
            atrous_rates=atrous_rates,
            norm=norm,
            dropout_p=dropout_p,
            decoder_dropout=decoder_dropout,
        )
        head = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head)


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ on an smp-contract encoder (usually built at output stride 16); logits at stride 4.

    ``norm`` and ``dropout_p`` apply to the decoder; ``atrous_rates=None`` picks them from
    ``encoder.output_stride``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        norm: str = "kn",
        decoder_channels: int = ASPP_CHANNELS,
        atrous_rates: Sequence[int] | None = None,
        low_level_channels: int = 48,
        dropout_p: float = KN_DROPOUT_P,
        decoder_dropout: float = DECODER_DROPOUT,
    ) -> None:
        if atrous_rates is None:
            atrous_rates = default_atrous_rates(encoder.output_stride)
        decoder = DeepLabV3PlusDecoder(
            encoder.out_channels,
            out_channels=decoder_channels,
            atrous_rates=atrous_rates,
            low_level_channels=low_level_channels,
            norm=norm,
            dropout_p=dropout_p,
            decoder_dropout=decoder_dropout,
        )
        head = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head)
