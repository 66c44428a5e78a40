"""Training: an iteration-based loop with validation, checkpoints, exact resume, DDP, AMP and accumulation.

`train` sets up the process group, locks the run directory and hands over to a `Trainer`, whose methods
are the run's steps in order: set up (data, model, optimizer, schedule, loss), `resume`, then `run`:
`step`, `save`, `validate`.

A run loses as little as it can: last.pth is written before the validation of the same iteration; a
failing validation, or a data error in training, first saves the steps made since the last save (one
process); SIGTERM saves and ends the run (`TrainingTerminated`); Ctrl-C ends it at once, leaving last.pth
as it was.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from segkn.config import Config, save_config
from segkn.data import DatasetError
from segkn.data.check import check_files
from segkn.engine import distributed
from segkn.engine.acceleration import compile_enabled, eager_unless, logged_compile, prepare_model
from segkn.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_payload,
    load_checkpoint,
    load_init_weights,
    save_run_checkpoint,
)
from segkn.engine.device import amp_dtype, resolve_device
from segkn.engine.evaluator import EvaluationStopped, evaluate, metrics_report, prediction_settings
from segkn.engine.loaders import build_split, build_train_loader, train_batches
from segkn.engine.losses import SegmentationLoss
from segkn.engine.privacy import make_private, resume_privacy
from segkn.engine.run_lock import lock_run_dir
from segkn.engine.run_log import LogWindow, RunLog, has_record
from segkn.engine.run_state import (
    check_run_dir,
    restore_rng,
    restore_schedule,
    run_config,
    seed_everything,
    warn_config_changes,
)
from segkn.engine.schedules import build_optimizer, build_scheduler
from segkn.engine.signals import StopRequest, TrainingTerminated, sigterm_requests
from segkn.engine.step import NonFiniteLoss, train_step
from segkn.engine.vis import ValidationPanels
from segkn.models import build_model
from segkn.progress import progress_bar

__all__ = ["Trainer", "TrainingDiverged", "TrainingTerminated", "train", "train_step"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    stop_at: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train as ``cfg`` says, into ``run_dir`` (default ``cfg.run_path``); returns a summary of the run.

    ``resume`` continues from ``run_dir/last.pth`` (weights, optimizer, schedule, scaler, step, best,
    random state and data position), ending with the weights an uninterrupted run would have.
    ``init`` starts the weights from a checkpoint only. ``stop_at`` ends (with a checkpoint) after
    that many iterations without changing the schedule, which is fixed by ``train.iterations``.
    Under torchrun each process calls this; the process group is set up and torn down here. The main
    process holds the run directory's lock (`lock_run_dir`) for the whole run: RunDirectoryBusy if another
    process trains there. ``progress`` shows bars on a terminal (the log lines are written either way).
    """
    with distributed.process_group(cfg.train.device) as info:
        run_path = Path(run_dir) if run_dir else cfg.run_path
        with lock_run_dir(run_path) if distributed.is_main() else contextlib.nullcontext():
            trainer = Trainer(
                cfg, run_path, resume=resume, init=init, local_rank=info.local_rank, progress=progress
            )
            return trainer.run(stop_at)


class Trainer:
    """One training run: set up (the constructor), `resume`, then `run`, a loop of `step`s.

    At their intervals the loop logs the loss, `validate`s (keeping best.pth) and `save`s last.pth. The
    run directory gets config.yaml, last.pth, best.pth, metrics.jsonl, tensorboard/, train.log and vis/.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        resume: bool = False,
        init: str | Path | None = None,
        local_rank: int = 0,
        progress: bool = True,
    ) -> None:
        """Set up: check the run directory, seed, build data, model, optimizer, schedule and loss."""
        self.run_dir, self.progress = run_dir, progress and distributed.is_main()
        self.last_path, self.best_path = run_dir / "last.pth", run_dir / "best.pth"
        self.device = resolve_device(cfg.train.device, local_rank)
        self.amp = amp_dtype(cfg.train.amp, self.device)
        # private training differentiates the model with torch.func: eagerly
        self.compile_train = compile_enabled(False if cfg.privacy.enabled else cfg.train.compile, self.device)
        self.compile_eval = compile_enabled(cfg.eval.compile, self.device)
        check_run_dir(run_dir, self.last_path, resume)
        seed_everything(cfg.seed)
        self._build_data(cfg)
        self._build_model(init)
        self.iteration, self.best = 0, None
        self.saved_iteration: int | None = None  # the iteration last.pth holds
        self.run_log: RunLog | None = None
        self._batches: Iterator[Any] | None = None
        self._resumed_rng: Mapping[str, Any] | None = None  # random state to restore when the loop starts
        self._sigterm = StopRequest()
        if resume:
            self.resume()

    def _build_data(self, cfg: Config) -> None:
        """The training and validation splits, the run's config (with the class count) and the loader."""
        world = distributed.world_size()
        self.train_set = build_split(cfg, cfg.data.train_split, train=True)
        self.val_set = build_split(cfg, cfg.data.val_split, train=False)
        # a bad validation file would stop the run at its first validation: find it now
        shard = range(distributed.rank(), len(self.val_set), world)
        check_files(self.val_set, shard, f"split {cfg.data.val_split!r}", progress=self.progress)
        self.classes, self.palette = self.train_set.classes, self.train_set.palette
        if len(self.train_set) // world < cfg.train.batch_size:
            raise DatasetError(
                f"split {cfg.data.train_split!r} has {len(self.train_set)} samples, fewer than one batch of "
                f"{cfg.train.batch_size} per process ({world} processes); lower train.batch_size"
            )
        self.cfg = cfg = run_config(cfg, self.run_dir, len(self.classes))
        self.panels = ValidationPanels.for_run(cfg, self.val_set, self.palette, self.run_dir)  # vis/<step>/
        self.loader = build_train_loader(
            self.train_set, cfg.train.batch_size, cfg.seed, cfg.data.num_workers, distributed.rank(), world,
            self.device.type == "cuda",
        )  # fmt: skip

    def _build_model(self, init: str | Path | None) -> None:
        """The model (the same initial weights on every process), optimizer, schedule, scaler and loss."""
        cfg, rank, t = self.cfg, distributed.rank(), self.cfg.train
        self.model = build_model(cfg.model.to_dict())
        if rank:
            seed_everything(cfg.seed + rank)  # each process its own dropout draws
        if init is not None:
            load_init_weights(self.model, init)
        # compiled in place (state_dict keys unchanged) before the DDP wrapper; a phase that is not to be
        # compiled runs it eagerly (see `_stance`)
        prepare_model(self.model, self.device, self.compile_train or self.compile_eval, t.channels_last)
        self.optimizer = build_optimizer(self.model, t.optimizer, t.lr, t.momentum, t.weight_decay)
        self.scheduler = build_scheduler(
            self.optimizer, t.iterations, t.poly_power, t.warmup_iters, t.warmup_ratio, t.min_lr
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        # DP-SGD (None if off): wraps the optimizer for the steps, keeps the privacy accounting
        self.privacy = make_private(cfg, self.model, self.optimizer, len(self.train_set))
        self.criterion = SegmentationLoss(t.dice_weight, t.lovasz_weight)

    def resume(self) -> None:
        """Continue from last.pth: weights, optimizer, schedule, scaler, iteration and best score.

        Its random state is restored when the loop starts, after everything that draws from it is built.
        """
        ckpt = load_checkpoint(self.last_path)
        warn_config_changes(ckpt["config"], self.cfg.to_dict())
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            restore_schedule(self.scheduler, ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt.get("scaler") or {})
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{self.last_path}: cannot resume from it with this config: {str(err).splitlines()[0]}"
            ) from None
        resume_privacy(self.privacy, ckpt, self.last_path)
        self.iteration, self.best = int(ckpt["step"]), ckpt.get("best")
        self.saved_iteration = self.iteration
        self._resumed_rng = {key: ckpt.get(key) for key in ("rng", "rng_per_rank")}
        log.info("resuming %s at iteration %d of %d", self.run_dir, self.iteration, self.cfg.train.iterations)

    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``train.iterations`` (or ``stop_at``); returns the run directory, iteration and best."""
        cfg, t, main = self.cfg, self.cfg.train, distributed.is_main()
        end = min(t.iterations, stop_at) if stop_at is not None else t.iterations
        budget_end = self.privacy.budget_end(self.iteration, end) if self.privacy else None  # max_epsilon
        end = end if budget_end is None else budget_end
        self.model = distributed.wrap_model(self.model, self.device)
        if main:
            save_config(cfg, self.run_dir / "config.yaml")
        distributed.barrier()
        with contextlib.ExitStack() as stack:
            self.run_log = stack.enter_context(RunLog(self.run_dir, self.saved_iteration)) if main else None
            stack.enter_context(logging_redirect_tqdm())
            self._sigterm = stack.enter_context(sigterm_requests())
            bar = stack.enter_context(  # off a terminal: the log lines at train.log_interval only
                progress_bar(
                    total=t.iterations,
                    initial=self.iteration,
                    desc="train",
                    dynamic_ncols=True,
                    enabled=self.progress,
                    lines=False,
                )  # fmt: skip
            )
            if self.privacy is not None:
                pin = self.device.type == "cuda"
                self._batches = self.privacy.batches(cfg, self.train_set, self.loader, self.iteration, pin)
            else:
                self._batches = train_batches(self.loader, self.iteration * t.accumulate)
            if self._resumed_rng is not None:
                restore_rng(self._resumed_rng, cfg.seed, self.iteration)  # last: building drew from it
                if self._validation_missed(budget_end):
                    log.info("the validation at iteration %d did not finish before the run stopped: "
                             "running it now", self.iteration)  # fmt: skip
                    self._validate_and_record_best()
            window = LogWindow()
            self.model.train()
            while self.iteration < end:
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    loss = self.step()
                except DatasetError as err:  # from the loader: the step had changed nothing yet
                    where = self._save_after_failure(f"training at iteration {self.iteration + 1}")
                    raise DatasetError(f"{err} [{where}]") from None
                window.loss, window.steps = window.loss + loss, window.steps + 1
                eps = {"eps": f"{self.privacy.epsilon():.3g}"} if self.privacy else {}
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", **eps, refresh=False)
                bar.update()
                if self.iteration % t.log_interval == 0 or self.iteration == end:
                    self._log_training(window, lr)
                    window = LogWindow()
                if self.iteration % t.checkpoint_interval == 0 or self.iteration == end:
                    self.save()  # before validating: a validation that fails loses nothing
                if self.iteration % t.val_interval == 0 or self.iteration in (t.iterations, budget_end):
                    self._validate_and_record_best()
                    window.start = time.perf_counter()
                if self.iteration < end and not distributed.all_true(
                    not self._sigterm.requested, self.device
                ):
                    self._terminate()
        distributed.barrier()
        if self.privacy is not None:
            self.privacy.log_stop(self.iteration, t.iterations)
        log.info("finished at iteration %d of %d; best val mIoU %s", self.iteration, t.iterations, self.best)
        return {"run_dir": str(self.run_dir), "step": self.iteration, "best": self.best}

    def step(self) -> float:
        """One optimizer step (``train.accumulate`` micro-batches), then a schedule step; returns the loss."""
        t = self.cfg.train
        assert self._batches is not None, "step() runs inside run()"
        try:
            if self.privacy is not None:
                loss = self.privacy.step(self.model, self._batches, self.criterion, self.amp, t.channels_last)
            else:
                with self._stance(self.compile_train), logged_compile(f"iteration {self.iteration + 1}"):
                    loss = train_step(
                        self.model, self._batches, self.criterion, self.optimizer, self.scaler, t.accumulate,
                        t.grad_clip, self.amp, t.channels_last,
                    )  # fmt: skip
        except NonFiniteLoss as err:
            saved = self.saved_iteration
            where = f"{self.last_path} (iteration {saved})" if saved else "none was written yet"
            raise TrainingDiverged(
                f"the loss is not finite ({err.value}) at iteration {self.iteration + 1} of {t.iterations}; "
                f"training stopped and this state was not saved. Last good checkpoint: {where}. "
                "Try a lower train.lr, train.grad_clip, or train.amp=off"
            ) from None
        self.scheduler.step()
        self.iteration += 1
        return loss

    def _log_training(self, window: LogWindow, lr: float) -> None:
        """Log the mean loss (over the window and all processes), the learning rate and the speed."""
        t, world = self.cfg.train, distributed.world_size()
        loss = distributed.all_mean(window.loss / window.steps, self.device)
        speed = window.steps * t.accumulate * t.batch_size * world / (time.perf_counter() - window.start)
        if self.run_log is not None:
            epoch = self.iteration * t.accumulate // (len(self.train_set) // world // t.batch_size)
            spent = {"epsilon": self.privacy.epsilon()} if self.privacy else {}
            self.run_log.record(
                "train", self.iteration, loss=loss, lr=lr, epoch=epoch, images_per_s=speed, **spent
            )
        eps = f"  epsilon {self.privacy.epsilon():.4g}" if self.privacy else ""
        line = (
            f"iteration {self.iteration}/{t.iterations}  loss {loss:.4f}  lr {lr:.3g}  {speed:.1f} img/s{eps}"
        )
        log.info("%s", line)

    def _validation_missed(self, budget_end: int | None) -> bool:
        """After a resume: whether the checkpoint's iteration was due a validation that left no record.

        last.pth is written before validating, so a run killed (or sent SIGTERM) while validating
        resumes after its validation; it runs now, at the point where it would have run.
        """
        t, i = self.cfg.train, self.iteration
        due = i > 0 and (i % t.val_interval == 0 or i in (t.iterations, budget_end))
        missed = (
            due
            and self.run_log is not None  # the main process reads the records; the others follow it
            and not has_record(self.run_dir, "val", i)
        )
        return not distributed.all_true(not missed, self.device)

    def _validate_and_record_best(self) -> None:
        """`validate`; a failure saves last.pth first (`_save_after_failure`).

        A data error's one-line message says what was saved, other errors are logged with it. A validation
        that SIGTERM stops is left out.
        """
        try:
            self.validate()
        except EvaluationStopped:
            return
        except DatasetError as err:
            where = self._save_after_failure(f"validation at iteration {self.iteration}")
            raise DatasetError(f"{err} [{where}]") from None
        except CheckpointError:  # best.pth could not be written: its message says what is kept
            raise
        except Exception:
            log.error("%s", self._save_after_failure(f"validation at iteration {self.iteration}"))
            raise

    def _save_after_failure(self, during: str) -> str:
        """Save the steps made since the last save (one process; a group cannot save alone); what was kept."""
        if distributed.world_size() == 1 and self.iteration != (self.saved_iteration or 0):
            self.save()  # the state of the last finished step
        if self.saved_iteration is None:
            return f"{during} stopped the run; no checkpoint was written yet"
        return (
            f"{during} stopped the run; {self.last_path} holds iteration {self.saved_iteration}: "
            f"continue with segkn train --resume {self.run_dir}"
        )

    def _terminate(self) -> None:
        """End the run after a SIGTERM: save last.pth if a step finished since the last save, then raise."""
        if self.saved_iteration != self.iteration:
            self.save()
        raise TrainingTerminated(
            f"terminated (SIGTERM) at iteration {self.iteration} of {self.cfg.train.iterations}; "
            f"{self.last_path} holds it: continue with segkn train --resume {self.run_dir}"
        )

    def validate(self) -> dict[str, Any]:
        """Score the validation split, keep best.pth if the mIoU improved, record the scores.

        In a one-process run a SIGTERM stops it after the current batch (EvaluationStopped).
        """
        cfg = self.cfg
        stop = (lambda: self._sigterm.requested) if distributed.world_size() == 1 else None
        with self._stance(self.compile_eval):  # the model's format is the training's: train.channels_last
            cm = evaluate(
                self.model, self.val_set, len(self.classes), self.device, **prediction_settings(cfg),
                batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers, amp_dtype=self.amp,
                channels_last=cfg.train.channels_last, stop=stop, progress=self.progress,
            )  # fmt: skip
            if self.run_log is not None:  # the main process
                self.panels.write(self.model, self.iteration, self.run_log.writer, self.device, self.amp,
                                  cfg.train.channels_last)  # fmt: skip
        log.info("validation at iteration %d:\n%s", self.iteration, cm.table(self.classes))
        report = metrics_report(cm, self.classes, step=self.iteration, split=cfg.data.val_split)
        miou = report["miou"]
        if miou is not None and (self.best is None or miou > self.best["miou"]):
            self._keep_best(miou)
        if self.run_log is not None:  # last: a run killed before this point validates again on resume
            per_class = {f"iou/{c['name']}": c["iou"] for c in report["classes"] if c["iou"] is not None}
            scores = {key: report[key] for key in ("miou", "aacc", "macc")}
            self.run_log.record("val", self.iteration, **scores, **per_class)
        self.model.train()
        return report

    def _keep_best(self, miou: float) -> None:
        """Write best.pth; a last.pth of this iteration is written again, so that it holds the new best."""
        self.best = {"miou": miou, "step": self.iteration}
        if distributed.is_main():
            payload = checkpoint_payload(
                self.cfg, self.model, self.classes, self.palette, step=self.iteration, best=self.best,
                **self._privacy_state(),
            )  # fmt: skip
            self._write_checkpoint(self.best_path, payload)
        if self.saved_iteration == self.iteration:
            self.save()

    def save(self) -> None:
        """Write last.pth: weights, optimizer, schedule, scaler, iteration, best and every process's RNG."""
        rng = distributed.all_gather_objects(capture_rng_state())
        if distributed.is_main():
            extra = {"rng_per_rank": rng} if len(rng) > 1 else {}
            payload = checkpoint_payload(
                self.cfg, self.model, self.classes, self.palette, optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), step=self.iteration,
                best=self.best, rng=rng[0], **extra, **self._privacy_state(),
            )  # fmt: skip
            self._write_checkpoint(self.last_path, payload)
        self.saved_iteration = self.iteration

    def _write_checkpoint(self, path: Path, payload: dict[str, Any]) -> None:
        saved = self.saved_iteration
        kept = (
            f"{self.last_path} holds iteration {saved}"
            if saved is not None
            else "no last.pth was written yet"
        )
        save_run_checkpoint(path, payload, kept, self.run_dir)

    def _privacy_state(self) -> dict[str, Any]:
        return {"privacy": self.privacy.state_dict()} if self.privacy else {}

    def _stance(self, compiled: bool) -> contextlib.AbstractContextManager[object]:
        """Compiled modules run compiled (``compiled``) or eagerly; nothing to choose when none is."""
        if not (self.compile_train or self.compile_eval):
            return contextlib.nullcontext()
        return eager_unless(compiled)
