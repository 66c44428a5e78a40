"""torchrun's process group (``process_group``), rank helpers, reductions and the DDP wrapper."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_mean",
    "all_true",
    "barrier",
    "cleanup",
    "init_distributed",
    "is_main",
    "on_main",
    "process_group",
    "rank",
    "unwrap",
    "world_size",
    "wrap_model",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); one process: no-op.

    The backend is nccl for ``device_type == "cuda"`` and gloo otherwise. Calling it when a group is
    already initialized returns the existing group's ranks.
    """
    info = DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
    if not info.distributed:
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    log.info("process group: %s, rank %d of %d", backend, info.rank, info.world_size)
    return info


def cleanup() -> None:
    """Leave and destroy the process group, if one is initialized."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[DistInfo]:
    """Within the block, this process is in torchrun's process group (if torchrun started it).

    ``device`` is the config's device word (auto | cpu | cuda | cuda:N): the group uses nccl for CUDA
    and gloo otherwise. A group that already exists when the block starts is used and left standing;
    one made here is destroyed at the end of the block, also when it ends by an error.
    """
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    owned = not (dist.is_available() and dist.is_initialized())
    info = init_distributed("cuda" if cuda else "cpu")
    try:
        yield info
    finally:
        if owned:
            cleanup()


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process; no-op without a process group."""
    if world_size() > 1:
        dist.barrier()


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run ``fn`` on rank 0 only and return its result there (None elsewhere)."""
    return fn(*args, **kwargs) if is_main() else None


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` holds on every process (a MIN all-reduce; the local flag alone without a group)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of ``value`` over all processes (``value`` itself without a group)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return t.item() / world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without a group)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when running with several processes, else ``model``.

    On CUDA, BatchNorm layers become SyncBatchNorm so their statistics span all processes; PyTorch has
    no SyncBatchNorm on the CPU, where each process keeps its own statistics (with a warning). A
    kernel-normalized model has none and is wrapped as is (its outputs do not depend on the other samples).
    """
    if world_size() == 1:
        return model
    if _has_batchnorm(model) and device.type == "cuda":
        log.info("converting BatchNorm to SyncBatchNorm across %d processes", world_size())
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif _has_batchnorm(model):
        log.warning(
            "BatchNorm statistics stay per process on %s (SyncBatchNorm needs CUDA): %d processes of "
            "batch B normalize like batches of B, not of %d x B",
            device.type, world_size(), world_size(),
        )  # fmt: skip
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile(model)`` wrappers (or ``model`` itself)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
