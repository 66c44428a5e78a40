"""Optimizer with decay-free 1-D parameters, and the warmup + poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["PolyWarmup", "build_optimizer", "build_scheduler"]


class PolyWarmup:
    """Learning-rate factor at step t: linear warmup, then poly decay from 1 to `min_factor`.

    Plain-number attributes only, so LambdaLR's state_dict stores and restores them.
    """

    def __init__(
        self, total_iters: int, power: float, warmup_iters: int, warmup_ratio: float, min_factor: float
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_iters) / self.total_iters
        factor = (1.0 - self.min_factor) * (1.0 - progress) ** self.power + self.min_factor
        if step < self.warmup_iters:  # mmseg-style: warmup scales the scheduled lr
            factor *= self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_iters
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Per-iteration LambdaLR: lr = (base - min_lr) * (1 - t/T)^power + min_lr, after a linear warmup.

    `min_lr` is absolute (as mmseg's eta_min); the warmup starts at `warmup_ratio` times the lr and
    reaches the poly curve at `warmup_iters`. Call `scheduler.step()` once per optimizer step.
    """
    if total_iters < 1 or warmup_iters < 0 or warmup_iters > total_iters or not 0.0 < warmup_ratio <= 1.0:
        raise ValueError(
            f"bad schedule: total_iters={total_iters}, warmup_iters={warmup_iters}, "
            f"warmup_ratio={warmup_ratio}"
        )
    lambdas = []
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        if min_lr > base:
            raise ValueError(f"min_lr {min_lr} is larger than the base learning rate {base}")
        lambdas.append(
            PolyWarmup(total_iters, power, warmup_iters, warmup_ratio, min_lr / base if base else 0.0)
        )
    return LambdaLR(optimizer, lambdas)


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW; biases and norm parameters (all 1-D tensors) get no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: expected sgd or adamw")
