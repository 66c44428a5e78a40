"""DeepLabV3 / DeepLabV3+ decoders: atrous spatial pyramid pooling (ASPP), every conv block with a norm word.

Default atrous rates are (6, 12, 18) at output stride 16 scaled by 16 / output_stride, so the
branches see the same field of view in input pixels: (12, 24, 36) at 8, (3, 6, 9) at 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkn.nn import KN_DROPOUT_P
from segkn.nn.blocks import ConvNormAct

ASPP_CHANNELS = 256  # width of the ASPP branches and of the decoder's output
ATROUS_RATES = (6, 12, 18)  # at output stride 16
DECODER_DROPOUT = 0.1  # dropout after the ASPP projection
# Both decoders need a feature past stride 4: the default atrous rates are set for output stride 8, 16
# or 32, and DeepLabV3+ fuses that deeper feature with the stride-4 one (at depth 2 they would be one).
MIN_ENCODER_DEPTH = 3


def default_atrous_rates(output_stride: int) -> tuple[int, ...]:
    """ASPP rates for an encoder's output stride: (12, 24, 36) at 8, (6, 12, 18) at 16, (3, 6, 9) at 32."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"no default atrous rates for output stride {output_stride}; use 8, 16 or 32")
    return tuple(rate * 16 // output_stride for rate in ATROUS_RATES)


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> 1x1 ConvNormAct -> broadcast back to the input size."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "kn", dropout_p: float = KN_DROPOUT_P
    ) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 1, norm=norm, dropout_p=dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        # Broadcasting a 1x1 map is what bilinear upsampling would give; expand keeps H, W dynamic.
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """A 1x1 branch, one 3x3 dilated branch per rate and an image-pooling branch, concatenated,
    projected by a 1x1 ConvNormAct, then Dropout(decoder_dropout)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = ASPP_CHANNELS,
        atrous_rates: Sequence[int] = ATROUS_RATES,
        norm: str = "kn",
        dropout_p: float = KN_DROPOUT_P,
        decoder_dropout: float = DECODER_DROPOUT,
    ) -> None:
        super().__init__()
        if not atrous_rates:
            raise ValueError("ASPP needs at least one atrous rate")
        branches: list[nn.Module] = [
            ConvNormAct(in_channels, out_channels, 1, norm=norm, dropout_p=dropout_p)
        ]
        branches += [
            ConvNormAct(in_channels, out_channels, 3, dilation=rate, norm=norm, dropout_p=dropout_p)
            for rate in atrous_rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels, norm=norm, dropout_p=dropout_p))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(
            len(branches) * out_channels, out_channels, 1, norm=norm, dropout_p=dropout_p
        )
        self.dropout = nn.Dropout(decoder_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


class DeepLabV3Decoder(nn.Module):
    """ASPP on the deepest feature, then a 3x3 ConvNormAct (torchvision's DeepLabHead, no classifier)."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        out_channels: int = ASPP_CHANNELS,
        atrous_rates: Sequence[int] = ATROUS_RATES,
        norm: str = "kn",
        dropout_p: float = KN_DROPOUT_P,
        decoder_dropout: float = DECODER_DROPOUT,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(
            encoder_channels[-1],
            out_channels,
            atrous_rates=atrous_rates,
            norm=norm,
            dropout_p=dropout_p,
            decoder_dropout=decoder_dropout,
        )
        self.conv = ConvNormAct(out_channels, out_channels, 3, norm=norm, dropout_p=dropout_p)
        self.out_channels = out_channels

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.conv(self.aspp(features[-1]))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest feature, upsampled to the stride-4 feature (projected to ``low_level_channels``
    by a 1x1 ConvNormAct), concatenated with it and fused by two 3x3 ConvNormAct; output at stride 4."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        out_channels: int = ASPP_CHANNELS,
        atrous_rates: Sequence[int] = ATROUS_RATES,
        low_level_channels: int = 48,
        norm: str = "kn",
        dropout_p: float = KN_DROPOUT_P,
        decoder_dropout: float = DECODER_DROPOUT,
    ) -> None:
        super().__init__()
        if len(encoder_channels) - 1 < MIN_ENCODER_DEPTH:
            raise ValueError(
                f"DeepLabV3+ fuses a feature past stride 4 with the stride-4 one: it needs an encoder of "
                f"depth >= {MIN_ENCODER_DEPTH}, got {len(encoder_channels) - 1}"
            )
        self.aspp = ASPP(
            encoder_channels[-1],
            out_channels,
            atrous_rates=atrous_rates,
            norm=norm,
            dropout_p=dropout_p,
            decoder_dropout=decoder_dropout,
        )
        self.low_level = ConvNormAct(
            encoder_channels[2], low_level_channels, 1, norm=norm, dropout_p=dropout_p
        )
        self.fuse = nn.Sequential(
            ConvNormAct(out_channels + low_level_channels, out_channels, 3, norm=norm, dropout_p=dropout_p),
            ConvNormAct(out_channels, out_channels, 3, norm=norm, dropout_p=dropout_p),
        )
        self.out_channels = out_channels

    def forward(self, features: list[Tensor]) -> Tensor:
        low = self.low_level(features[2])
        high = self.aspp(features[-1])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, low], dim=1))
