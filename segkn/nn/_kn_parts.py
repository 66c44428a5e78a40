"""The pieces of the kernel normalized convolution shared by its two paths (plain ops, autograd).

Per-pixel channel moments, their pooling over each window, the convolution cropped to the KN
output and the epilogue ``(conv - mu * sum(W)) * r + b``; also the dtype rules (statistics in at
least float32, autocast switched off while they are computed) and the dropout mask.
"""

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from segkn.nn.geometry import KNGeometry

_MASK_BITS = 15  # dropout probabilities are resolved to 1 / 32768


def stats_dtype(x: Tensor) -> torch.dtype:
    """Statistics are computed in at least float32 (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


class _Unchanged:
    """A context that does nothing, which TorchScript can compile."""

    def __init__(self) -> None:
        pass

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        pass


def _float32_stats(x: Tensor):  # no return annotation: one type under TorchScript, another in Python
    """Context that switches autocast off while statistics are computed in float32 (a plain
    ``torch.autocast`` object, which torch.compile traces without a graph break). TorchScript
    compiles a context that does nothing: scripted code has no autocast to switch off here."""
    if torch.jit.is_scripting():
        return _Unchanged()
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@torch.jit.unused  # eager and torch.compile only: TorchScript draws with F.dropout (see _tracing)
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
    """Whether a tracer or compiler (torch.compile, torch.export, functorch, TorchScript) runs the code."""
    if torch.jit.is_scripting():
        return True
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._are_functorch_transforms_active()
    )


def _dtypes(x: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(statistics dtype, convolution dtype): statistics in at least float32; the convolution in
    autocast's dtype where autocast is on, as ``F.conv2d`` would run."""
    stats = stats_dtype(x)
    if torch.jit.is_scripting():
        return stats, x.dtype
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
    window = maps.new_full((channels, 1, kernel[0], kernel[1]), 1.0 / (kernel[0] * kernel[1]))
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


@torch.jit.unused  # eager only: TorchScript runs the out-of-place epilogue
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
