"""Layers: kernel normalization, kernel normalized convolutions and the norm/conv-block factory."""

from segkn.nn.kernel_norm import KernelNorm2d, KernelNorm2d1x1
from segkn.nn.knconv import KNConv2d, KNConv2d1x1

__all__ = ["KNConv2d", "KNConv2d1x1", "KernelNorm2d", "KernelNorm2d1x1"]
