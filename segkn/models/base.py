"""Encoder + decoder + head assembly shared by every segkn architecture."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SegmentationModel(nn.Module):
    """Runs encoder -> decoder -> head on any input size and returns logits of exactly that size.

    The input is zero-padded at the bottom and right to a multiple of ``size_divisor``, the
    encoder's largest stride (2 ** depth, dilated or not), so that every feature map lines up with
    its skip connection; the logits are upsampled to the padded size and cropped back to the input's H x W.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.size_divisor = 2 ** (len(encoder.out_channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pad_h = (self.size_divisor - h % self.size_divisor) % self.size_divisor
        pad_w = (self.size_divisor - w % self.size_divisor) % self.size_divisor
        # Padded unconditionally (a zero pad is a cheap copy): a shape test here would be frozen into
        # an exported graph at the export sample's size.
        x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.encoder(x)
        logits = self.head(self.decoder(features))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        # Cropped by a negative pad, a copy, rather than a slice: torch.compile would guard on whether
        # the slice is contiguous (whether h and w are multiples of the divisor) and recompile for each.
        return F.pad(logits, (0, -pad_w, 0, -pad_h))
