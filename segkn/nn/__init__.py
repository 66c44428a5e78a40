"""Layers: kernel normalization, kernel normalized convolutions and the norm/conv-block factory."""

from segkn.nn.kernel_norm import KN_DROPOUT_P, KernelNorm2d, KernelNorm2d1x1
from segkn.nn.knconv import KNConv2d, KNConv2d1x1

__all__ = ["KN_DROPOUT_P", "KNConv2d", "KNConv2d1x1", "KernelNorm2d", "KernelNorm2d1x1"]
