"""Kernel Normalization layers (Nasirigerdeh et al., TMLR 2024).

KernelNorm2d normalizes every C x kh x kw unit that a convolution window would see, each unit with
its own mean and (biased) variance; padded zeros take part in the statistics. It has no affine
parameters and is batch-independent: a sample's output never depends on the other samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkn.nn._kn_parts import _float32_stats, stats_dtype
from segkn.nn.geometry import IntOr2, Padding, to_pad4, to_pair

# The statistics dropout of every KN layer unless told otherwise: the paper's KNResNets use 0.05.
KN_DROPOUT_P = 0.05


class KernelNorm2d(nn.Module):
    """Kernel normalization: normalize each C x kh x kw unit; output (N, C, H'*kh, W'*kw).

    The statistics of a unit come from a dropout copy of it while training (dropout_p), from the
    unit itself in eval mode. Followed by a convolution with kernel = stride = kernel_size this is
    the paper's kernel normalized convolution; ``KNConv2d`` computes the same thing without
    materializing the units.
    """

    def __init__(
        self,
        kernel_size: IntOr2 = 1,
        stride: IntOr2 = 1,
        padding: Padding = 0,
        dropout_p: float = KN_DROPOUT_P,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.kernel_size = to_pair(kernel_size, "kernel_size")
        self.stride = to_pair(stride, "stride")
        self.padding = to_pad4(padding)
        self.dropout_p = float(dropout_p)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        x = F.pad(x, self.padding)
        units = x.unfold(2, kh, sh).unfold(3, kw, sw)  # N, C, H', W', kh, kw
        h_out, w_out = units.shape[2], units.shape[3]
        units = units.permute(0, 2, 3, 1, 4, 5)  # N, H', W', C, kh, kw
        stats_src = F.dropout(units, self.dropout_p, self.training) if self.dropout_p > 0 else units
        var, mean = torch.var_mean(stats_src, dim=(3, 4, 5), keepdim=True, correction=0)
        units = (units - mean) * torch.rsqrt(var + self.eps)
        # lay the normalized units side by side: (N, C, H'*kh, W'*kw)
        return units.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h_out * kh, w_out * kw)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dropout_p={self.dropout_p}, eps={self.eps}"
        )


class KernelNorm2d1x1(nn.Module):
    """Kernel normalization with 1x1 units: each pixel normalized over its channels."""

    def __init__(self, dropout_p: float = KN_DROPOUT_P, eps: float = 1e-5) -> None:
        super().__init__()
        self.dropout_p = float(dropout_p)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        with _float32_stats(x):
            xf = x.to(stats_dtype(x))
            stats_src = F.dropout(xf, self.dropout_p, self.training) if self.dropout_p > 0 else xf
            var, mean = torch.var_mean(stats_src, dim=1, keepdim=True, correction=0)
            out = (xf - mean) * torch.rsqrt(var + self.eps)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dropout_p={self.dropout_p}, eps={self.eps}"
