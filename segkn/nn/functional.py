"""``kn_conv2d``: the kernel normalized convolution as a function, with a memory-lean backward.

For the unit under output position o (C_in x kh x kw values, padded zeros included) with mean mu_o
and biased variance var_o, and weights W summed per output channel k over C_in x kh x kw (ws_k):

    y_ok = (conv(x, W)_ok - mu_o * ws_k) * r_o + b_k,    r_o = 1 / sqrt(var_o + eps)

mu and var are pooled over each window from the per-pixel channel moments of the input (of a
dropout copy of it while training), so nothing of size C_in x kh x kw per position is ever built.
The work beyond the convolution is one read of the input for the moments, a few passes over
two-channel maps, and a two-pass epilogue over the output.

In eager mode with gradients the layer runs as one autograd Function that keeps only what the
backward needs: the input (which the preceding ReLU keeps anyway), the output (which a fused ReLU
or the following max pool keeps anyway), a boolean dropout mask and per-position maps. The
backward recomputes the cheap window statistics. Under ``torch.compile``, ``torch.export`` and
functorch transforms the same formula runs as plain differentiable ops, which inductor fuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from segkn.nn.kernel_norm import _float32_stats, stats_dtype

__all__ = ["KNGeometry", "dropout_mask", "kn_conv2d"]

_MASK_BITS = 15  # dropout probabilities are resolved to 1 / 32768


@dataclass(frozen=True)
class KNGeometry:
    """Kernel, stride, dilation, groups and padding of a KN convolution, and how the conv pads.

    A symmetric padding is done by the convolution itself. An asymmetric one is done as the
    symmetric padding of its larger sides, cropping the extra output rows/columns (no padded copy
    of the input is made or kept for backward), unless the stride does not allow it: then the
    input is padded explicitly.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad4: tuple[int, int, int, int]  # left, right, top, bottom
    groups: int

    @property
    def extent(self) -> tuple[int, int]:
        return (
            self.dilation[0] * (self.kernel[0] - 1) + 1,
            self.dilation[1] * (self.kernel[1] - 1) + 1,
        )

    @property
    def padding_only_windows(self) -> bool:
        """Whether some window can hold padding only (its unit normalizes to zeros: output = bias)."""
        left, right, top, bottom = self.pad4
        extent_h, extent_w = self.extent
        return (
            max(top, bottom) >= extent_h
            or max(left, right) >= extent_w
            or (self.dilation != (1, 1) and any(self.pad4))
        )

    @property
    def conv_padding(self) -> tuple[int, int]:
        """Symmetric (h, w) padding given to the convolution (0 when the input is padded first)."""
        if self.pre_pad:
            return (0, 0)
        left, right, top, bottom = self.pad4
        return (max(top, bottom), max(left, right))

    @property
    def pre_pad(self) -> bool:
        """Whether the input must be padded explicitly (an asymmetric padding the stride cannot crop)."""
        left, right, top, bottom = self.pad4
        return (max(top, bottom) - top) % self.stride[0] != 0 or (max(left, right) - left) % self.stride[
            1
        ] != 0

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        left, right, top, bottom = self.pad4
        extent_h, extent_w = self.extent
        return (
            (h + top + bottom - extent_h) // self.stride[0] + 1,
            (w + left + right - extent_w) // self.stride[1] + 1,
        )

    def crop(self) -> tuple[int, int] | None:
        """(row, column) offset of the wanted output inside the conv's output, None if it is all of it."""
        if self.pre_pad:
            return None
        left, right, top, bottom = self.pad4
        pad_h, pad_w = self.conv_padding
        if (pad_h, pad_w) == (top, left) and (top, left) == (bottom, right):
            return None
        return ((pad_h - top) // self.stride[0], (pad_w - left) // self.stride[1])


def kn_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    geometry: KNGeometry,
    dropout_p: float = 0.0,
    eps: float = 1e-5,
    training: bool = False,
    relu: bool = False,
) -> Tensor:
    """Kernel normalized convolution of ``x`` (N, C, H, W); ``relu`` applies a ReLU to the output."""
    if x.dim() != 4:
        raise ValueError(f"kn_conv2d expects a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")
    p = float(dropout_p) if training else 0.0
    if geometry.kernel == (1, 1) and geometry.stride == (1, 1) and _dtypes(x)[1] != stats_dtype(x):
        return _kn_conv1x1_low_precision(x, weight, bias, geometry, p, float(eps), relu)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    tracing = _tracing()
    if needs_grad and not tracing:
        return _KNConv2dFunction.apply(x, weight, bias, geometry, p, float(eps), relu)
    return _kn_conv2d_ops(x, weight, bias, geometry, p, float(eps), relu, inplace=not (needs_grad or tracing))


def dropout_mask(like: Tensor, p: float) -> Tensor:
    """Boolean mask of the values a dropout with probability ``p`` drops, shaped like ``like``.

    Drawn from torch's global generator as 15 random bits per value (``p`` resolved to 1/32768):
    on CPU this costs about a third of ``bernoulli_``, which draws one generator call per value.
    """
    n = like.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_()
    words = words.bitwise_and_(0x7FFF7FFF7FFF7FFF)  # four 15-bit draws per 64-bit word
    threshold = round(p * (1 << _MASK_BITS))
    return words.view(torch.int16)[:n].lt(threshold).view(like.shape)


def _tracing() -> bool:
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._are_functorch_transforms_active()
    )


# ---- the pieces shared by both paths -----------------------------------------------------------


def _dtypes(x: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(statistics dtype, convolution dtype): statistics in at least float32; the convolution in
    autocast's dtype where autocast is on, as ``F.conv2d`` would run."""
    stats = stats_dtype(x)
    device = x.device.type
    conv = x.dtype
    if (
        x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
    ):
        conv = torch.get_autocast_dtype(device)
    return stats, conv


def _pixel_moments(src: Tensor, scale: float, mode: str) -> tuple[Tensor, Tensor]:
    """Per-pixel channel mean and mean square of ``scale * src``, (N, 1, H, W) each.

    mode: "ops" (differentiable), "read" (src is read only), "scratch" (src may be overwritten).
    """
    channels = src.shape[1]
    mean = src.sum(dim=1, keepdim=True) * (scale / channels)
    if mode == "ops":
        square = src.square().sum(dim=1, keepdim=True)
    elif mode == "scratch":  # square in place: no new buffer, and a cheaper reduction than a norm
        square = src.square_().sum(dim=1, keepdim=True)
    else:  # one read, no temporary the size of the input
        square = torch.linalg.vector_norm(src, dim=1, keepdim=True).square_()
    return mean, square * (scale * scale / channels)


def _pool(maps: Tensor, geo: KNGeometry) -> Tensor:
    """Average (already padded) maps over each dilated kh x kw window, at the conv's stride."""
    kernel, stride, dilation = geo.kernel, geo.stride, geo.dilation
    if kernel == (1, 1):
        return maps[:, :, :: stride[0], :: stride[1]] if stride != (1, 1) else maps
    if dilation == (1, 1):
        return F.avg_pool2d(maps, kernel, stride)
    channels = maps.shape[1]
    window = maps.new_full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
    return F.conv2d(maps, window, None, stride, 0, dilation, groups=channels)


def _real_share(like: Tensor, geo: KNGeometry) -> Tensor | None:
    """Share of real (not padded) pixels in each window, (1, 1, H', W'), where some window holds
    padding only; else None."""
    if not geo.padding_only_windows:
        return None
    ones = like.new_ones((1, 1, like.shape[2], like.shape[3]))
    return _pool(F.pad(ones, geo.pad4), geo)


def _window_stats(
    mean_px: Tensor, square_px: Tensor, real: Tensor | None, geo: KNGeometry, eps: float
) -> tuple[Tensor, Tensor]:
    """Each window's mean and 1 / sqrt(var + eps) from the per-pixel moments (N, 1, H, W).

    Padded pixels count as zeros. A window of padding only gets r = 0, so that its unit
    normalizes to exact zeros (output = bias) rather than to rounding noise times 1 / sqrt(eps).
    """
    moments = torch.cat([mean_px, square_px], dim=1)
    if any(geo.pad4):
        moments = F.pad(moments, geo.pad4)
    moments = _pool(moments, geo)
    mean, square = moments[:, :1], moments[:, 1:]
    var = (square - mean.square()).clamp_min(0.0)
    inv_std = torch.rsqrt(var + eps)
    if real is not None:
        inv_std = torch.where(real > 0, inv_std, 0.0)
    return mean, inv_std


def _conv(x: Tensor, weight: Tensor, geo: KNGeometry) -> Tensor:
    """The convolution of the (unpadded) input, cropped to the KN output; a view when cropped."""
    if geo.pre_pad:
        x = F.pad(x, geo.pad4)
    out = F.conv2d(x, weight, None, geo.stride, geo.conv_padding, geo.dilation, geo.groups)
    crop = geo.crop()
    if crop is not None:
        h, w = geo.output_size(x.shape[2], x.shape[3])
        out = out[:, :, crop[0] : crop[0] + h, crop[1] : crop[1] + w]
    return out


def _weight_sum(weight: Tensor, dtype: torch.dtype) -> Tensor:
    return weight.to(dtype).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)


def _epilogue_inplace(
    conv: Tensor, mean: Tensor, inv_std: Tensor, weight: Tensor, bias: Tensor | None, relu: bool
) -> Tensor:
    """(conv - mean * sum(W)) * r + b (+ ReLU) in two or three passes, reusing the conv's buffer
    when it is a whole float tensor of the statistics' dtype; the result is in that dtype."""
    stats_dtype = mean.dtype
    weight_sum = _weight_sum(weight, stats_dtype)
    if conv.dtype == stats_dtype and conv.is_contiguous(memory_format=_memory_format(conv)):
        out = conv.addcmul_(mean, weight_sum, value=-1.0)
    else:  # a cropped view or a low-precision conv: the first pass writes a new tensor
        out = torch.addcmul(conv.to(stats_dtype), mean, weight_sum, value=-1.0)
    if bias is not None:
        out = torch.addcmul(bias.to(stats_dtype).view(1, -1, 1, 1), out, inv_std, out=out)
    else:
        out = out.mul_(inv_std)
    return out.relu_() if relu else out


def _memory_format(x: Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


# ---- plain differentiable ops: no-grad eager, torch.compile, export, functorch -------------------


def _kn_conv2d_ops(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    geo: KNGeometry,
    p: float,
    eps: float,
    relu: bool,
    inplace: bool,
) -> Tensor:
    stats_dtype, conv_dtype = _dtypes(x)
    with _float32_stats(x):
        xs = x.to(stats_dtype)
        if p > 0 and _tracing():  # the tracer's own random numbers (inductor fuses them)
            src = F.dropout(xs, p, True)
        elif p > 0:  # the same draw as the autograd Function
            src = xs.masked_fill(dropout_mask(x, p), 0.0) * (1.0 / (1.0 - p))
        else:
            src = xs
        mean_px, square_px = _pixel_moments(src, 1.0, "ops")
        mean, inv_std = _window_stats(mean_px, square_px, _real_share(xs, geo), geo, eps)
        conv = _conv(x.to(conv_dtype), weight.to(conv_dtype), geo)
        if inplace:  # no autograd: reuse the conv's buffer
            out = _epilogue_inplace(conv, mean, inv_std, weight, bias, relu)
        else:
            out = (conv.to(stats_dtype) - mean * _weight_sum(weight, stats_dtype)) * inv_std
            if bias is not None:
                out = out + bias.to(stats_dtype).view(1, -1, 1, 1)
            if relu:
                out = torch.relu(out)
    return out.to(conv_dtype)


def _kn_conv1x1_low_precision(
    x: Tensor, weight: Tensor, bias: Tensor | None, geo: KNGeometry, p: float, eps: float, relu: bool
) -> Tensor:
    """A 1x1 KN conv under autocast: normalize in float32 first, then convolve in low precision.

    conv(x) - mu * sum(W) cancels when a pixel's mean is large next to its spread, and in bfloat16 or
    float16 that cancellation loses the signal; for 1x1 units the normalized input costs no more
    than the input itself, so it is formed explicitly.
    """
    stats_dtype, conv_dtype = _dtypes(x)
    with _float32_stats(x):
        xs = x.to(stats_dtype)
        src = F.dropout(xs, p, True) if p > 0 else xs
        var, mean = torch.var_mean(src, dim=1, keepdim=True, correction=0)
        normed = ((xs - mean) * torch.rsqrt(var + eps)).to(conv_dtype)
        bias_ = bias.to(conv_dtype) if bias is not None else None
        out = F.conv2d(normed, weight.to(conv_dtype), bias_, 1, 0, 1, geo.groups)
    return torch.relu(out) if relu else out


# ---- eager training: an autograd Function that keeps little -----------------------------------


class _KNConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        geo: KNGeometry,
        p: float,
        eps: float,
        relu: bool,
    ) -> Tensor:
        stats_dtype, conv_dtype = _dtypes(x)
        with _float32_stats(x):
            xs = x.to(stats_dtype)
            dropped = None
            if p > 0:  # kept for backward as one byte per value
                dropped = dropout_mask(x, p)
                src = torch.where(dropped, 0.0, xs)  # one pass (masked_fill clones first)
            else:
                src = xs
            scale = 1.0 / (1.0 - p)
            mean_px, square_px = _pixel_moments(src, scale, "scratch" if p > 0 else "read")
            del src
            real = _real_share(xs, geo)
            mean, inv_std = _window_stats(mean_px, square_px, real, geo, eps)
            xc, wc = x.to(conv_dtype), weight.to(conv_dtype)
            out = _epilogue_inplace(_conv(xc, wc, geo), mean, inv_std, weight, bias, relu).to(conv_dtype)

        ctx.geo, ctx.scale, ctx.eps, ctx.relu = geo, scale, eps, relu
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.save_for_backward(xc, wc, dropped, mean_px, square_px, real, mean, inv_std, out, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor):  # type: ignore[override]
        xc, wc, dropped, mean_px, square_px, real, mean, inv_std, out, bias = ctx.saved_tensors
        geo: KNGeometry = ctx.geo
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        stats_dtype = mean.dtype
        need_x, need_w, need_b = ctx.needs_input_grad[:3]

        g = grad.to(stats_dtype)
        if ctx.relu:  # the gradient before the fused ReLU
            g = torch.ops.aten.threshold_backward(g, out.to(stats_dtype), 0.0)
        # Per position: sum_k g * (y - b) (the gradient of r, times r), sum_k g * ws_k, sum_k g * b_k.
        k = g.shape[1]
        weight_sum = _weight_sum(wc, stats_dtype).view(k)
        bias_ = bias.to(stats_dtype) if bias is not None else weight_sum.new_zeros(k)
        n, _, h, w = g.shape
        projections = torch.matmul(torch.stack([weight_sum, bias_]), g.reshape(n, k, h * w)).view(n, 2, h, w)
        scratch = torch.mul(g, out.to(stats_dtype))
        g_out = scratch.sum(dim=1, keepdim=True)
        grad_inv_std = torch.where(inv_std > 0, (g_out - projections[:, 1:]) / inv_std, 0.0)
        grad_mean = -inv_std * projections[:, :1]

        grad_x = grad_w = grad_b = None
        if need_b:
            grad_b = g.sum(dim=(0, 2, 3)).to(b_dtype)
        g_r = g.mul_(inv_std) if g is not grad else torch.mul(g, inv_std, out=scratch)
        del scratch
        if need_w:
            mean_term = torch.bmm(g_r.reshape(n, k, h * w), mean.reshape(n, h * w, 1)).sum(dim=0)
        g_conv = g_r
        crop = geo.crop()
        if crop is not None:
            full_h, full_w = _full_conv_size(xc, geo)
            g_conv = g_r.new_zeros((g_r.shape[0], k, full_h, full_w))
            g_conv[:, :, crop[0] : crop[0] + g_r.shape[2], crop[1] : crop[1] + g_r.shape[3]] = g_r
        x_in = F.pad(xc, geo.pad4) if geo.pre_pad else xc
        conv_grad_x, conv_grad_w, _ = torch.ops.aten.convolution_backward(
            g_conv.to(xc.dtype),
            x_in,
            wc,
            None,
            geo.stride,
            geo.conv_padding,
            geo.dilation,
            False,
            (0, 0),
            geo.groups,
            (need_x, need_w, False),
        )
        if need_w:
            grad_w = (conv_grad_w.to(stats_dtype) - mean_term.view(k, 1, 1, 1)).to(w_dtype)
        if need_x:
            if geo.pre_pad:
                left, right, top, bottom = geo.pad4
                conv_grad_x = conv_grad_x[
                    :, :, top : conv_grad_x.shape[2] - bottom, left : conv_grad_x.shape[3] - right
                ]
            # Through the statistics: recompute the small window maps and differentiate them.
            with torch.enable_grad():
                mean_px_ = mean_px.detach().requires_grad_()
                square_px_ = square_px.detach().requires_grad_()
                mean2, inv_std2 = _window_stats(mean_px_, square_px_, real, geo, ctx.eps)
                g_mean_px, g_square_px = torch.autograd.grad(
                    (mean2, inv_std2), (mean_px_, square_px_), (grad_mean, grad_inv_std)
                )
            # mean_px = mean_c(s), square_px = mean_c(s^2), s = scale * x where not dropped: the
            # gradient to x is alpha + beta * x per pixel where not dropped, else 0
            scale, channels = ctx.scale, xc.shape[1]
            alpha = g_mean_px * (scale / channels)
            beta = g_square_px * (2.0 * scale * scale / channels)
            grad_x = conv_grad_x.to(stats_dtype)
            if dropped is None and grad_x is conv_grad_x:  # in place, no temporary
                grad_x = grad_x.addcmul_(beta, xc).add_(alpha)
            else:
                through_stats = torch.addcmul(alpha, beta, xc.to(stats_dtype))
                if dropped is not None:
                    through_stats = through_stats.masked_fill_(dropped, 0.0)
                grad_x = grad_x.add_(through_stats) if grad_x is conv_grad_x else grad_x + through_stats
            grad_x = grad_x.to(x_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def _full_conv_size(x: Tensor, geo: KNGeometry) -> tuple[int, int]:
    """Output size of the conv with its symmetric padding (before the crop)."""
    pad_h, pad_w = geo.conv_padding
    extent_h, extent_w = geo.extent
    return (
        (x.shape[2] + 2 * pad_h - extent_h) // geo.stride[0] + 1,
        (x.shape[3] + 2 * pad_w - extent_w) // geo.stride[1] + 1,
    )
