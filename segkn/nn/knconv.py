"""Kernel normalized convolution, computed without unfolding.

``KNConv2d`` equals ``KernelNorm2d(k, s, p)`` followed by a convolution with kernel = stride = k,
but costs one ordinary convolution plus a few per-pixel passes. For the unit under output position
(i, j) with weights W (summed per output channel over C_in x kh x kw):

    y = (conv(x_pad, W) - mu * sum(W)) / sqrt(var + eps) + b

mu and var are the mean and biased variance over the C x kh x kw unit. They are pooled from the
per-pixel channel moments E_c[x] and E_c[x^2] with an average over the (dilated, strided) window,
so memory and time do not grow with C x kh x kw per output position. The computation lives in
``segkn.nn.functional.kn_conv2d``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segkn.nn.functional import kn_conv2d
from segkn.nn.geometry import IntOr2, KNGeometry, Padding, to_pad4
from segkn.nn.kernel_norm import KN_DROPOUT_P


class KNConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` whose input units are kernel normalized.

    ``padding`` is an int, (pad_h, pad_w) or (left, right, top, bottom); padded zeros count in the
    statistics. While training, the statistics come from a dropout copy of the input (dropout_p);
    in eval mode the layer is deterministic. Statistics are computed in float32 under autocast.
    ``relu=True`` applies a ReLU to the output inside the layer, which saves the memory and the
    pass of a separate ReLU while training.
    """

    # TorchScript takes `padding` as a constant (nn.Conv2d's __constants__): its getter is not compiled.
    __jit_unused_properties__ = ["padding"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr2,
        stride: IntOr2 = 1,
        padding: Padding = 0,
        dilation: IntOr2 = 1,
        groups: int = 1,
        bias: bool = True,
        dropout_p: float = KN_DROPOUT_P,
        eps: float = 1e-5,
        relu: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            dilation=dilation,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.padding = padding
        self.dropout_p = float(dropout_p)
        self.eps = float(eps)
        self.relu = bool(relu)

    # nn.Conv2d keeps `padding` as (h, w); a KN layer may pad asymmetrically, so it keeps the four
    # sides and shows (h, w) whenever the padding is symmetric.
    @property
    def padding(self) -> tuple[int, ...]:  # type: ignore[override]
        left, right, top, bottom = self.pad4
        return (top, left) if (left, top) == (right, bottom) else self.pad4

    @padding.setter
    def padding(self, value: Padding) -> None:
        self.pad4 = to_pad4(value)

    @property
    def geometry(self) -> KNGeometry:
        """Kernel, stride, dilation, padding and groups, as ``kn_conv2d`` takes them."""
        return KNGeometry(self.kernel_size, self.stride, self.dilation, self.pad4, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return kn_conv2d(
            x, self.weight, self.bias, self.geometry, self.dropout_p, self.eps, self.training, self.relu
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        )
        if any(self.pad4):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        text += f", dropout_p={self.dropout_p}, eps={self.eps}"
        return text + (", relu=True" if self.relu else "")


class KNConv2d1x1(KNConv2d):
    """1x1 kernel normalized convolution: each pixel normalized over its channels, then a 1x1 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: IntOr2 = 1,
        groups: int = 1,
        bias: bool = True,
        dropout_p: float = KN_DROPOUT_P,
        eps: float = 1e-5,
        relu: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            1,
            stride=stride,
            groups=groups,
            bias=bias,
            dropout_p=dropout_p,
            eps=eps,
            relu=relu,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != (1, 1):  # only the pixels the conv reads take part: normalize just those
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        geometry = KNGeometry((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), self.groups)
        return kn_conv2d(
            x, self.weight, self.bias, geometry, self.dropout_p, self.eps, self.training, self.relu
        )
