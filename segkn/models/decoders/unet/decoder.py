"""U-Net decoder: per encoder stage, upsample x2, concatenate the skip of that stride, two 3x3 ConvNormAct."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkn.nn import KN_DROPOUT_P
from segkn.nn.blocks import ConvNormAct

UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # one width per block, deepest first; cut to the depth


class UNetBlock(nn.Module):
    """Nearest x2 upsample (to the skip's size when there is one), concat the skip, two 3x3 ConvNormAct."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str = "kn",
        dropout_p: float = KN_DROPOUT_P,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels, 3, norm=norm, dropout_p=dropout_p)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm, dropout_p=dropout_p)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            # Equal to x2 for a padded input; a no-op where a dilated encoder kept the resolution.
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """One UNetBlock per encoder stage, from the deepest feature back to stride 1.

    The skips are the encoder features at strides 2**(depth-1) .. 2; ``features[0]`` (the input)
    is not a skip. ``decoder_channels`` (outputs of the blocks, deepest first) is cut to the encoder
    depth: a depth-3 encoder takes the first three.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = UNET_DECODER_CHANNELS,
        norm: str = "kn",
        dropout_p: float = KN_DROPOUT_P,
    ) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < 1:
            raise ValueError(
                f"U-Net needs an encoder of depth >= 1, got encoder channels {list(encoder_channels)}"
            )
        if len(decoder_channels) < depth:
            raise ValueError(
                f"decoder_channels {list(decoder_channels)} has {len(decoder_channels)} entries; "
                f"the encoder has depth {depth}, give at least {depth}"
            )
        out_channels = [int(c) for c in decoder_channels[:depth]]
        in_channels = [encoder_channels[-1], *out_channels[:-1]]
        skip_channels = [*reversed(encoder_channels[1:-1]), 0]
        self.blocks = nn.ModuleList(
            UNetBlock(i, s, o, norm=norm, dropout_p=dropout_p)
            for i, s, o in zip(in_channels, skip_channels, out_channels, strict=True)
        )
        self.out_channels = out_channels[-1]

    def forward(self, features: list[Tensor]) -> Tensor:
        skips = features[1:-1][::-1]
        x = features[-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x
