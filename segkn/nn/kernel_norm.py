"""Kernel Normalization layers (Nasirigerdeh et al., TMLR 2024).

KernelNorm2d normalizes every C x kh x kw unit that a convolution window would see, each unit with
its own mean and (biased) variance; padded zeros take part in the statistics. It has no affine
parameters and is batch-independent: a sample's output never depends on the other samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IntOr2 = int | Sequence[int]
Padding = int | Sequence[int]


def to_pair(value: IntOr2, name: str) -> tuple[int, int]:
    """An int or a 2-sequence as an (h, w) pair."""
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    return pair  # type: ignore[return-value]


def to_pad4(padding: Padding) -> tuple[int, int, int, int]:
    """Padding as (left, right, top, bottom).

    An int pads all sides; a 2-sequence is (pad_h, pad_w) as in ``nn.Conv2d``; a 4-sequence is
    (left, right, top, bottom) as in ``F.pad``.
    """
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported; give int, (h, w) or (l, r, t, b)")
    if isinstance(padding, int):
        return padding, padding, padding, padding
    pad = tuple(int(p) for p in padding)
    if len(pad) == 2:
        return pad[1], pad[1], pad[0], pad[0]
    if len(pad) == 4:
        return pad  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (h, w) or (left, right, top, bottom), got {padding!r}")


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
        dropout_p: float = 0.1,
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

    def __init__(self, dropout_p: float = 0.1, eps: float = 1e-5) -> None:
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


def stats_dtype(x: Tensor) -> torch.dtype:
    """Statistics are computed in at least float32 (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _float32_stats(x: Tensor) -> contextlib.AbstractContextManager:
    """Context that switches autocast off while statistics are computed in float32 (a plain
    ``torch.autocast`` object, which torch.compile traces without a graph break)."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
