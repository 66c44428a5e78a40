"""Unfold-based reference for kernel normalized convolutions (the paper's definition, spelled out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knconv_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    pad4: tuple[int, int, int, int],
    dilation: tuple[int, int],
    eps: float = 1e-5,
    stats_input: Tensor | None = None,
) -> Tensor:
    """Normalize every (dilated) C x kh x kw unit with its own mean / biased variance, then apply W.

    ``stats_input`` (already padded) supplies the statistics when given, e.g. a dropout copy.
    groups = 1 only.
    """
    n, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    xp = F.pad(x, pad4)
    units = F.unfold(xp, (kh, kw), dilation=dilation, stride=stride)  # N, C*kh*kw, L
    src = units if stats_input is None else F.unfold(stats_input, (kh, kw), dilation=dilation, stride=stride)
    var, mean = torch.var_mean(src, dim=1, keepdim=True, correction=0)
    normed = (units - mean) / torch.sqrt(var + eps)
    out = weight.flatten(1) @ normed  # N, C_out, L
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    h_out = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return out.view(n, -1, h_out, w_out)
