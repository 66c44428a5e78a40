"""U-Net: an encoder, a U-Net decoder back to stride 1 and a 3x3 conv head to the class logits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from segkn.models.base import SegmentationModel
from segkn.models.decoders.unet.decoder import UNET_DECODER_CHANNELS, UNetDecoder
from segkn.nn import KN_DROPOUT_P


class UNet(SegmentationModel):
    """U-Net on an smp-contract encoder. ``norm`` and ``dropout_p`` (the KN statistics dropout) apply
    to the decoder; the encoder keeps its own."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        norm: str = "kn",
        decoder_channels: Sequence[int] = UNET_DECODER_CHANNELS,
        dropout_p: float = KN_DROPOUT_P,
    ) -> None:
        decoder = UNetDecoder(
            encoder.out_channels, decoder_channels=decoder_channels, norm=norm, dropout_p=dropout_p
        )
        head = nn.Conv2d(decoder.out_channels, num_classes, kernel_size=3, padding=1)
        super().__init__(encoder, decoder, head)
