"""One optimizer step of training: micro-batches, loss check on every process, scaling, clipping."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from segkn.engine import distributed
from segkn.engine.acceleration import to_channels_last

__all__ = ["NonFiniteLoss", "train_step"]


class NonFiniteLoss(Exception):
    """A loss that is NaN or infinite on some process; ``value`` is this process's loss."""

    def __init__(self, value: float) -> None:
        self.value = value


def train_step(
    model: nn.Module,
    batches: Iterator[Any],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    accumulate: int = 1,
    grad_clip: float | None = None,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> float:
    """One optimizer step over ``accumulate`` micro-batches from ``batches``; returns their mean loss.

    The loss is checked on every process before its backward pass, so a NaN or infinite loss anywhere
    stops all processes before any weight changes (raises NonFiniteLoss). With ``channels_last`` the
    images are handed to the model in that memory format.
    """
    device = next(model.parameters()).device
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(accumulate):
        images, masks = next(batches)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if channels_last:
            images = to_channels_last(images)
        # DDP all-reduces gradients on the last micro-batch's backward only
        sync = model.no_sync() if ddp and micro < accumulate - 1 else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = criterion(model(images), masks)
            value = loss.item()
            if not distributed.all_true(math.isfinite(value), device):
                raise NonFiniteLoss(value)
            scaler.scale(loss / accumulate).backward()
        total += value / accumulate
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total
