"""The kernel normalized convolution as an autograd Function for eager training: it keeps little.

The backward needs the input (which the preceding ReLU keeps anyway), the output (which a fused
ReLU or the following max pool keeps anyway), a boolean dropout mask and per-position maps; it
recomputes the cheap window statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from segkn.nn._kn_parts import (
    _conv,
    _dtypes,
    _epilogue_inplace,
    _float32_stats,
    _pixel_moments,
    _real_share,
    _weight_sum,
    _window_stats,
    dropout_mask,
)
from segkn.nn.geometry import KNGeometry


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
