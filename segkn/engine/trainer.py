"""Training: an iteration-based loop with validation, checkpoints, exact resume, DDP, AMP and accumulation.

``_train`` reads from top to bottom: data, model, optimizer and schedule, loss, resume, then the loop.
One run writes one directory: config.yaml, last.pth, best.pth, metrics.jsonl, tensorboard/, train.log.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from segkn.config import Config, ConfigError, save_config
from segkn.data import DatasetError
from segkn.engine import distributed
from segkn.engine.acceleration import (
    compile_enabled,
    eager_unless,
    logged_compile,
    prepare_model,
    to_channels_last,
)
from segkn.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from segkn.engine.device import amp_dtype, resolve_device
from segkn.engine.evaluator import evaluate, metrics_report
from segkn.engine.loaders import build_split, build_train_loader, train_batches
from segkn.engine.losses import SegmentationLoss
from segkn.engine.run_log import RunLog
from segkn.engine.schedules import build_optimizer, build_scheduler
from segkn.models import build_model

__all__ = [
    "TrainingDiverged",
    "checkpoint_payload",
    "load_init_weights",
    "seed_everything",
    "train",
    "train_step",
]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Start ``model`` from a segkn checkpoint's weights, skipping tensors whose name or shape differ."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise CheckpointError(
            f"{path}: none of its {len(state)} weights fit this model (other architecture?)"
        )
    model.load_state_dict(fitting, strict=False)
    skipped = sorted(set(own) - set(fitting))
    log.info("initialized %d of %d tensors from %s", len(fitting), len(own), path)
    if skipped:
        log.warning("not in %s or of another shape, left as built: %s", path, ", ".join(skipped[:8]))


def checkpoint_payload(
    cfg: Config, model: nn.Module, classes: Any, palette: Any, **extra: Any
) -> dict[str, Any]:
    """The DESIGN.md checkpoint dict: config, weights, classes, palette and any of optimizer ... rng."""
    return {
        "config": cfg.to_dict(),
        "model": distributed.unwrap(model).state_dict(),
        "classes": [str(c) for c in classes],
        "palette": [[int(v) for v in colour] for colour in palette],
        **extra,
    }


def _run_config(cfg: Config, run_dir: Path, num_classes: int) -> Config:
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


def _warn_config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> None:
    for key in sorted((set(saved) | set(current)) - {"run_dir", "name"}):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            _warn_config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            log.warning("resuming with %s%s = %r (the checkpoint was made with %r)", prefix, key, b, a)


def _restore_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, state: Mapping[str, Any]) -> None:
    """Restore the schedule's position; its shape (lr, iterations, warmup) comes from the current config.

    With an unchanged config this is an exact restore; with e.g. more iterations the run continues on
    the longer schedule from its current step.
    """
    shape = {key: scheduler.state_dict()[key] for key in ("lr_lambdas", "base_lrs")}
    scheduler.load_state_dict({**state, **shape})
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)


def _restore_rng(ckpt: Mapping[str, Any], seed: int, step: int) -> None:
    states = ckpt.get("rng_per_rank")
    if distributed.world_size() > 1 and states is not None and len(states) == distributed.world_size():
        restore_rng_state(states[distributed.rank()])
    elif distributed.world_size() == 1 and ckpt.get("rng") is not None:
        restore_rng_state(ckpt["rng"])
    else:
        log.warning("no random state saved for %d processes; reseeding", distributed.world_size())
        seed_everything(seed + 1000 * step + distributed.rank())


class _NonFiniteLoss(Exception):
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
    stops all processes before any weight changes (raises _NonFiniteLoss). With ``channels_last`` the
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
                raise _NonFiniteLoss(value)
            scaler.scale(loss / accumulate).backward()
        total += value / accumulate
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train as ``cfg`` says, into ``run_dir`` (default ``cfg.run_path``); returns a summary of the run.

    ``resume`` continues from ``run_dir/last.pth`` (weights, optimizer, schedule, scaler, step, best,
    random state and data position), ending with the weights an uninterrupted run would have.
    ``init`` starts the weights from a checkpoint only. ``stop_at`` ends (with a checkpoint) after
    that many iterations without changing the schedule, which is fixed by ``train.iterations``.
    Under torchrun each process calls this; the process group is set up and torn down here.
    """
    device_word = cfg.train.device
    cuda = device_word.startswith("cuda") or (device_word == "auto" and torch.cuda.is_available())
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.init_distributed("cuda" if cuda else "cpu")
    try:
        return _train(cfg, Path(run_dir) if run_dir else cfg.run_path, resume, init, stop_at, info.local_rank)
    finally:
        if owns_group:
            distributed.cleanup()


def _train(
    cfg: Config, run_dir: Path, resume: bool, init: str | Path | None, stop_at: int | None, local_rank: int
) -> dict[str, Any]:
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    device = resolve_device(cfg.train.device, local_rank)
    amp = amp_dtype(cfg.train.amp, device)
    compile_train = compile_enabled(cfg.train.compile, device)
    compile_eval = compile_enabled(cfg.eval.compile, device)
    last_path, best_path = run_dir / "last.pth", run_dir / "best.pth"
    if resume and not last_path.is_file():
        raise CheckpointError(f"{last_path}: no checkpoint to resume from (is {run_dir} a run directory?)")
    if not resume and last_path.exists():
        raise ConfigError(
            f"{run_dir} already holds a run ({last_path.name}); continue it with --resume {run_dir}, "
            "or choose another --run-dir or name"
        )
    seed_everything(cfg.seed)

    # data
    train_set = build_split(cfg, cfg.data.train_split, train=True)
    val_set = build_split(cfg, cfg.data.val_split, train=False)
    classes, palette = train_set.classes, train_set.palette
    if len(train_set) // world < cfg.train.batch_size:
        raise DatasetError(
            f"split {cfg.data.train_split!r} has {len(train_set)} samples, fewer than one batch of "
            f"{cfg.train.batch_size} per process ({world} processes); lower train.batch_size"
        )
    cfg = _run_config(cfg, run_dir, len(classes))
    loader = build_train_loader(
        train_set, cfg.train.batch_size, cfg.seed, cfg.data.num_workers, rank, world, device.type == "cuda"
    )

    # model, optimizer, schedule, loss
    model = build_model(cfg.model.to_dict())  # the same initial weights on every process
    if rank:
        seed_everything(cfg.seed + rank)  # but each process its own dropout draws
    if init is not None:
        load_init_weights(model, init)
    # compiled in place (state_dict keys unchanged) before the DDP wrapper; a phase that is not to be
    # compiled runs it eagerly (see `stance`)
    prepare_model(model, device, compile_train or compile_eval, cfg.train.channels_last)
    optimizer = build_optimizer(
        model, cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay
    )
    total = cfg.train.iterations
    scheduler = build_scheduler(
        optimizer,
        total,
        cfg.train.poly_power,
        cfg.train.warmup_iters,
        cfg.train.warmup_ratio,
        cfg.train.min_lr,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    criterion = SegmentationLoss(cfg.train.dice_weight, cfg.train.lovasz_weight)

    # resume
    step, best, ckpt = 0, None, None
    if resume:
        ckpt = load_checkpoint(last_path)
        _warn_config_changes(ckpt["config"], cfg.to_dict())
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            _restore_schedule(scheduler, ckpt["scheduler"])
            scaler.load_state_dict(ckpt.get("scaler") or {})
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{last_path}: cannot resume from it with this config: {str(err).splitlines()[0]}"
            ) from None
        step, best = int(ckpt["step"]), ckpt.get("best")
        log.info("resuming %s at iteration %d of %d", run_dir, step, total)
    model = distributed.wrap_model(model, device)
    end = min(total, stop_at) if stop_at is not None else total
    if main:
        save_config(cfg, run_dir / "config.yaml")
    distributed.barrier()

    def save_last() -> None:
        rng = distributed.all_gather_objects(capture_rng_state())
        if not main:
            return
        extra = {"rng_per_rank": rng} if world > 1 else {}
        payload = checkpoint_payload(
            cfg, model, classes, palette, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), step=step, best=best, rng=rng[0], **extra,
        )  # fmt: skip
        save_checkpoint(last_path, payload)

    def stance(compiled: bool) -> contextlib.AbstractContextManager[object]:
        if not (compile_train or compile_eval):
            return contextlib.nullcontext()
        return eager_unless(compiled)

    def validate() -> dict[str, Any]:
        with stance(compile_eval):  # the model's format is the training's: train.channels_last
            cm = evaluate(
                model, val_set, len(classes), device, cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride,
                cfg.eval.scales, cfg.eval.flip, cfg.eval.batch_size, cfg.data.num_workers, amp,
                channels_last=cfg.train.channels_last,
            )  # fmt: skip
        log.info("validation at iteration %d:\n%s", step, cm.table(classes))
        return metrics_report(cm, classes, step=step, split=cfg.data.val_split)

    # the loop
    with contextlib.ExitStack() as stack:
        run_log = stack.enter_context(RunLog(run_dir, step if resume else None)) if main else None
        stack.enter_context(logging_redirect_tqdm())
        bar = stack.enter_context(
            tqdm(total=total, initial=step, desc="train", dynamic_ncols=True, disable=not main)
        )
        per_epoch = len(train_set) // world // cfg.train.batch_size
        consumed = step * cfg.train.accumulate
        batches = train_batches(loader, consumed)
        if ckpt is not None:
            _restore_rng(ckpt, cfg.seed, step)  # last: building the model and loaders drew from it
        saved_step = step if resume else None
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        model.train()
        while step < end:
            lr = optimizer.param_groups[0]["lr"]
            try:
                with stance(compile_train), logged_compile(f"iteration {step + 1}"):
                    step_loss = train_step(
                        model, batches, criterion, optimizer, scaler, cfg.train.accumulate,
                        cfg.train.grad_clip, amp, cfg.train.channels_last,
                    )  # fmt: skip
            except _NonFiniteLoss as err:
                where = f"{last_path} (iteration {saved_step})" if saved_step else "none was written yet"
                raise TrainingDiverged(
                    f"the loss is not finite ({err.value}) at iteration {step + 1} of {total}; training "
                    f"stopped and this state was not saved. Last good checkpoint: {where}. "
                    "Try a lower train.lr, train.grad_clip, or train.amp=off"
                ) from None
            scheduler.step()
            step += 1
            consumed += cfg.train.accumulate
            window_loss, window_steps = window_loss + step_loss, window_steps + 1
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.3g}", refresh=False)
            bar.update()

            if step % cfg.train.log_interval == 0 or step == end:
                mean_loss = window_loss / window_steps
                if world > 1:
                    t = torch.tensor([mean_loss], device=device)
                    torch.distributed.all_reduce(t)
                    mean_loss = t.item() / world
                seconds = time.perf_counter() - window_start
                speed = window_steps * cfg.train.accumulate * cfg.train.batch_size * world / seconds
                if run_log is not None:
                    run_log.record(
                        "train", step, loss=mean_loss, lr=lr, epoch=consumed // per_epoch, images_per_s=speed
                    )
                log.info("iteration %d/%d  loss %.4f  lr %.3g  %.1f img/s", step, total, mean_loss, lr, speed)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()

            if step % cfg.train.val_interval == 0 or step == total:
                report = validate()
                improved = best is None or report["miou"] is not None and report["miou"] > best["miou"]
                if improved and report["miou"] is not None:
                    best = {"miou": report["miou"], "step": step}
                    if main:
                        save_checkpoint(
                            best_path, checkpoint_payload(cfg, model, classes, palette, step=step, best=best)
                        )
                if run_log is not None:
                    per_class = {
                        f"iou/{c['name']}": c["iou"] for c in report["classes"] if c["iou"] is not None
                    }
                    run_log.record(
                        "val",
                        step,
                        miou=report["miou"],
                        aacc=report["aacc"],
                        macc=report["macc"],
                        **per_class,
                    )
                model.train()
                window_start = time.perf_counter()

            if step % cfg.train.checkpoint_interval == 0 or step == end:
                save_last()
                saved_step = step
    distributed.barrier()
    log.info("finished at iteration %d of %d; best val mIoU %s", step, total, best)
    return {"run_dir": str(run_dir), "step": step, "best": best}
