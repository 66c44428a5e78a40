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
backward recomputes the cheap window statistics (``segkn.nn._kn_autograd``). Under
``torch.compile``, ``torch.export``, functorch transforms and ``torch.jit.script`` the same formula
runs as plain differentiable ops, which inductor fuses. Both paths are made of the pieces in
``segkn.nn._kn_parts``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segkn.nn._kn_autograd import _KNConv2dFunction
from segkn.nn._kn_parts import (
    _conv,
    _dtypes,
    _epilogue_inplace,
    _float32_stats,
    _pixel_moments,
    _real_share,
    _tracing,
    _weight_sum,
    _window_stats,
    dropout_mask,
    stats_dtype,
)
from segkn.nn.geometry import KNGeometry

__all__ = ["KNGeometry", "dropout_mask", "kn_conv2d"]


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
    if torch.jit.is_scripting():  # TorchScript runs the plain ops (it cannot run autograd Functions)
        return _kn_conv2d_ops(x, weight, bias, geometry, dropout_p if training else 0.0, eps, relu, False)
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
