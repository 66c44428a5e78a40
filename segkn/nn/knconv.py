"""Kernel normalized convolution, computed without unfolding.

``KNConv2d`` equals ``KernelNorm2d(k, s, p)`` followed by a convolution with kernel = stride = k,
but costs one ordinary convolution plus a few per-pixel passes. For the unit under output position
(i, j) with weights W (summed per output channel over C_in x kh x kw):

    y = (conv(x_pad, W) - mu * sum(W)) / sqrt(var + eps) + b

mu and var are the mean and biased variance over the C x kh x kw unit. They are pooled from the
per-pixel channel moments E_c[x] and E_c[x^2] with an average over the (dilated, strided) window,
so memory and time do not grow with C x kh x kw per output position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkn.nn.kernel_norm import IntOr2, Padding, _float32_stats, stats_dtype, to_pad4


class KNConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` whose input units are kernel normalized.

    ``padding`` is an int, (pad_h, pad_w) or (left, right, top, bottom); padded zeros count in the
    statistics. While training, the statistics come from a dropout copy of the input (dropout_p);
    in eval mode the layer is deterministic. Statistics are computed in float32 under autocast.
    """

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
        dropout_p: float = 0.05,
        eps: float = 1e-5,
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

    # nn.Conv2d keeps `padding` as (h, w); a KN layer may pad asymmetrically, so it keeps the four
    # sides and shows (h, w) whenever the padding is symmetric.
    @property
    def padding(self) -> tuple[int, ...]:  # type: ignore[override]
        left, right, top, bottom = self.pad4
        return (top, left) if (left, top) == (right, bottom) else self.pad4

    @padding.setter
    def padding(self, value: Padding) -> None:
        self.pad4 = to_pad4(value)

    def forward(self, x: Tensor) -> Tensor:
        with _float32_stats(x):
            xf = x.to(stats_dtype(x))
            stats_src = F.dropout(xf, self.dropout_p, self.training) if self.dropout_p > 0 else xf
            # E[x^2] is taken around a per-sample shift s (the mean of the unpadded input), which
            # leaves the variance unchanged and keeps E[(x-s)^2] - E[x-s]^2 well conditioned. The
            # mean itself is not shifted, so that a unit of zeros (common after ReLU) gives exactly
            # conv - mu * sum(W) = 0, as the definition does.
            shift = stats_src.detach().mean(dim=(1, 2, 3), keepdim=True)
            stats_src = F.pad(stats_src, self.pad4) if any(self.pad4) else stats_src
            moments = torch.cat(
                [stats_src.mean(dim=1, keepdim=True), (stats_src - shift).square().mean(dim=1, keepdim=True)],
                dim=1,
            )
            moments = self._pool_window(moments)
            mean, sq_mean = moments[:, :1], moments[:, 1:]
            var = (sq_mean - (mean - shift).square()).clamp_min(0.0)
            inv_std = torch.rsqrt(var + self.eps)
        x = F.pad(x, self.pad4) if any(self.pad4) else x
        conv = F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)
        weight_sum = self.weight.to(mean.dtype).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        out = (conv.to(mean.dtype) - mean * weight_sum) * inv_std
        if self.bias is not None:
            out = out + self.bias.to(mean.dtype).view(1, -1, 1, 1)
        if self._has_padding_only_windows():
            # A unit made only of padding normalizes to exact zeros (output = bias); the shifted
            # formula would leave rounding noise there, amplified by 1 / sqrt(eps).
            real = self._real_pixel_share(x)
            bias = self.bias.to(out.dtype).view(1, -1, 1, 1) if self.bias is not None else out.new_zeros(())
            out = torch.where(real > 0, out, bias)
        return out.to(conv.dtype)

    def _has_padding_only_windows(self) -> bool:
        left, right, top, bottom = self.pad4
        extent_h = self.dilation[0] * (self.kernel_size[0] - 1) + 1
        extent_w = self.dilation[1] * (self.kernel_size[1] - 1) + 1
        return (
            max(top, bottom) >= extent_h
            or max(left, right) >= extent_w
            or (self.dilation != (1, 1) and any(self.pad4))
        )

    def _real_pixel_share(self, x_padded: Tensor) -> Tensor:
        """Share of real (not padded) pixels in each window, shape (1, 1, H', W')."""
        left, right, top, bottom = self.pad4
        h, w = x_padded.shape[2] - top - bottom, x_padded.shape[3] - left - right
        mask = F.pad(x_padded.new_ones((1, 1, h, w), dtype=torch.float32), self.pad4)
        return self._pool_window(mask.expand(1, 2, -1, -1))[:, :1]

    def _pool_window(self, moments: Tensor) -> Tensor:
        """Average the per-pixel moments over each (dilated) kh x kw window, at the conv's stride."""
        kernel, stride, dilation = self.kernel_size, self.stride, self.dilation
        if kernel == (1, 1):
            return moments[:, :, :: stride[0], :: stride[1]] if stride != (1, 1) else moments
        if dilation == (1, 1):
            return F.avg_pool2d(moments, kernel, stride)
        window = moments.new_full((2, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        return F.conv2d(moments, window, None, stride, 0, dilation, groups=2)

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
        return text + f", dropout_p={self.dropout_p}, eps={self.eps}"


class KNConv2d1x1(KNConv2d):
    """1x1 kernel normalized convolution: each pixel normalized over its channels, then a 1x1 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: IntOr2 = 1,
        groups: int = 1,
        bias: bool = True,
        dropout_p: float = 0.05,
        eps: float = 1e-5,
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
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        with _float32_stats(x):
            xf = x.to(stats_dtype(x))
            stats_src = F.dropout(xf, self.dropout_p, self.training) if self.dropout_p > 0 else xf
            var, mean = torch.var_mean(stats_src, dim=1, keepdim=True, correction=0)
            normed = (xf - mean) * torch.rsqrt(var + self.eps)
        return F.conv2d(normed.to(x.dtype), self.weight, self.bias, 1, 0, 1, self.groups)
