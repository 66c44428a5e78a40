"""Prediction with a segmentation model: whole image, sliding window, multi-scale and flip (TTA).

It sits beside the models so that both the evaluator (which scores datasets) and the inference layer
(which serves users) predict the same way without one importing the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkn.nn.geometry import to_pair

__all__ = ["predict", "predict_logits", "same_size_batches", "slide_logits"]

T = TypeVar("T")


def slide_logits(
    model: nn.Module,
    x: Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    window_batch: int = 4,
) -> Tensor:
    """Logits for ``x`` (N, 3, H, W) from overlapping ``crop_size`` windows every ``stride`` pixels.

    Windows cover the image edge to edge (the last one in a row or column is shifted back inside the
    image); where windows overlap their logits are averaged. A crop at least as large as the image is
    one window: the result equals a whole-image forward pass.
    """
    (ch, cw), (sh, sw) = to_pair(crop_size, "crop_size", True), to_pair(stride, "stride", True)
    n, _, h, w = x.shape
    ch, cw = min(ch, h), min(cw, w)
    rows = math.ceil(max(h - ch, 0) / sh) + 1
    cols = math.ceil(max(w - cw, 0) / sw) + 1
    boxes = [(min(r * sh, h - ch), min(c * sw, w - cw)) for r in range(rows) for c in range(cols)]
    total: Tensor | None = None
    count = x.new_zeros((1, 1, h, w))
    for i in range(0, len(boxes), window_batch):
        chunk = boxes[i : i + window_batch]
        crops = torch.cat([x[:, :, y : y + ch, x0 : x0 + cw] for y, x0 in chunk])
        out = model(crops).float()
        if total is None:
            total = out.new_zeros((n, out.shape[1], h, w))
        for j, (y, x0) in enumerate(chunk):
            total[:, :, y : y + ch, x0 : x0 + cw] += out[j * n : (j + 1) * n]
            count[:, :, y : y + ch, x0 : x0 + cw] += 1
    assert total is not None and bool((count > 0).all()), "windows must cover the image"
    return total / count


def predict_logits(
    model: nn.Module,
    x: Tensor,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> Tensor:
    """Float32 logits of ``x`` (N, 3, H, W) at its size, by a ``whole`` pass or a ``slide`` over windows."""
    if mode == "whole":
        return model(x).float()
    if mode == "slide":
        if crop_size is None:
            raise ValueError("slide inference needs crop_size")
        if stride is None:
            stride = [max(1, math.ceil(2 * c / 3)) for c in to_pair(crop_size, "crop_size", True)]
        return slide_logits(model, x, crop_size, stride)
    raise ValueError(f"unknown inference mode {mode!r}: expected whole or slide")


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    out_size: Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities (N, K, *out_size) for ``x``, averaged over rescaled and flipped copies.

    Each scale ``s`` runs on ``x`` resized to ``round(s * H) x round(s * W)``; with ``flip`` also on its
    mirror image. Logits are resized bilinearly to ``out_size`` (default: ``x``'s size) before softmax.
    """
    h, w = x.shape[-2:]
    size = tuple(out_size) if out_size is not None else (h, w)
    probs: Tensor | None = None
    views = 0
    for scale in scales:
        xs = x
        if scale != 1.0:
            scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
            xs = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            logits = predict_logits(model, xs.flip(-1) if mirrored else xs, mode, crop_size, stride)
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            probs = p if probs is None else probs + p
            views += 1
    assert probs is not None, "at least one scale"
    return probs / views


def same_size_batches(
    items: Iterable[T], size: Callable[[T], Hashable], limit: int | None = None
) -> Iterator[list[T]]:
    """Consecutive ``items`` of one ``size(item)`` grouped into lists (at most ``limit`` long), in order.

    Images of one size can be stacked into one forward pass; the order of the items is kept.
    """
    batch: list[T] = []
    key: Hashable = None
    for item in items:
        item_key = size(item)
        if batch and (item_key != key or len(batch) == limit):
            yield batch
            batch = []
        if not batch:
            key = item_key
        batch.append(item)
    if batch:
        yield batch
