"""A run's state beyond its weights: seeding, the run's config, and what resuming restores and checks."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkn.config import Config, ConfigError
from segkn.engine import distributed
from segkn.engine.checkpoint import CheckpointError, restore_rng_state

__all__ = [
    "check_run_dir",
    "restore_rng",
    "restore_schedule",
    "run_config",
    "seed_everything",
    "warn_config_changes",
]

log = logging.getLogger(__name__)


def check_run_dir(run_dir: Path, last_path: Path, resume: bool) -> None:
    """A resumed run needs ``last_path``; a new run must not overwrite one (errors say what to do)."""
    if resume and not last_path.is_file():
        raise CheckpointError(f"{last_path}: no checkpoint to resume from (is {run_dir} a run directory?)")
    if not resume and last_path.exists():
        raise ConfigError(
            f"{run_dir} already holds a run ({last_path.name}); continue it with --resume "
            f"{run_dir}, or choose another --run-dir or name"
        )


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_config(cfg: Config, run_dir: Path, num_classes: int) -> Config:
    """``cfg`` with the run directory and the dataset's class count written in, as saved with the run."""
    cfg = copy.deepcopy(cfg)
    cfg.run_dir, cfg.name = str(run_dir.parent), run_dir.name
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(
            f"model.num_classes: {cfg.model.num_classes}, but the {cfg.data.type} dataset has {num_classes} "
            "classes (leave it null to take the dataset's)"
        )
    cfg.model.num_classes = num_classes
    return cfg


def warn_config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> None:
    """Log a warning for each setting (but the run's place) that differs from the checkpoint's config."""
    for key in sorted((set(saved) | set(current)) - {"run_dir", "name"}):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            warn_config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            log.warning("resuming with %s%s = %r (the checkpoint was made with %r)", prefix, key, b, a)


def restore_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, state: Mapping[str, Any]) -> None:
    """Restore the schedule's position; its shape (lr, iterations, warmup) comes from the current config.

    With an unchanged config this is an exact restore; with e.g. more iterations the run continues on
    the longer schedule from its current step.
    """
    shape = {key: scheduler.state_dict()[key] for key in ("lr_lambdas", "base_lrs")}
    scheduler.load_state_dict({**state, **shape})
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)


def restore_rng(ckpt: Mapping[str, Any], seed: int, step: int) -> None:
    """Each process's random state from a checkpoint; reseed (with a warning) where none fits."""
    states = ckpt.get("rng_per_rank")
    if distributed.world_size() > 1 and states is not None and len(states) == distributed.world_size():
        restore_rng_state(states[distributed.rank()])
    elif distributed.world_size() == 1 and ckpt.get("rng") is not None:
        restore_rng_state(ckpt["rng"])
    else:
        log.warning("no random state saved for %d processes; reseeding", distributed.world_size())
        seed_everything(seed + 1000 * step + distributed.rank())
