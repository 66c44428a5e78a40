"""Differentially private training (DP-SGD) on Opacus: per-sample gradients, clipping, noise, accounting.

Per-sample gradients come from ``torch.func`` over the whole model (``vmap`` of ``grad`` of one sample's
loss), so every layer, KNConv2d included, is differentiated as it computes: no per-layer grad sampler of
Opacus is used, in-place ops and fused ReLUs run as in training, and KN statistics dropout draws a mask
per sample. Opacus' ``DPOptimizer`` clips each sample's gradient to ``max_grad_norm``, sums the chunks
of a logical batch (gradient accumulation), adds Gaussian noise once per step and averages; its
accountant (RDP or PRV) turns the steps into the epsilon spent. Batches are Poisson-sampled
(``segkn.engine.loaders.poisson_batches``). The accountant's history is plain numbers, saved in every
checkpoint and restored on resume, so a restart never resets the budget. Opacus (and the SciPy it
loads, several seconds) is imported only when a private run starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from segkn.config import Config, ConfigError, PrivacyConfig
from segkn.engine import distributed
from segkn.engine.acceleration import to_channels_last
from segkn.engine.loaders import poisson_batches, train_batches
from segkn.engine.step import NonFiniteLoss

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

__all__ = [
    "PrivateTraining",
    "check_private_model",
    "make_private",
    "per_sample_gradients",
    "private_step",
    "resume_privacy",
]

log = logging.getLogger(__name__)


def check_private_model(model: nn.Module) -> None:
    """ConfigError if ``model`` has a layer that mixes the samples of a batch (any BatchNorm)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"privacy: the model has a {type(module).__name__} ({name}), which normalizes with "
                "statistics of the whole batch: a sample's gradient then depends on the other samples, so "
                "per-sample gradients (and the DP guarantee) are meaningless. Use model.norm: kn (or gn, ln) "
                "and a decoder_norm other than bn"
            )


def per_sample_gradients(
    model: nn.Module, criterion: nn.Module, images: Tensor, masks: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """Each sample's gradient of its own loss, ``{name: (N, *param.shape)}``, and the losses (N,)."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_of_one(p: dict[str, Tensor], image: Tensor, mask: Tensor) -> Tensor:
        return criterion(functional_call(model, (p, buffers), (image[None],)), mask[None])

    # randomness "different": KN statistics dropout draws each sample's own mask, as in a batch
    per_sample = vmap(grad_and_value(loss_of_one), in_dims=(None, 0, 0), randomness="different")
    return per_sample(params, images, masks)


def private_step(
    model: nn.Module,
    chunks: Sequence[Any],
    criterion: nn.Module,
    optimizer: DPOptimizer,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> float:
    """One DP-SGD step over a logical batch given in ``chunks`` of ``(images, masks)`` (None: empty).

    Each chunk's per-sample gradients are clipped and summed; the noise is added once, after the last.
    Returns the mean loss of the batch's samples (0 for an empty batch).
    """
    model = distributed.unwrap(model)  # the gradients are reduced by the (distributed) DP optimizer
    device = next(model.parameters()).device
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer.zero_grad(set_to_none=True)
    total, count, bad = 0.0, 0, None
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        if chunk is None:
            grads = {name: p.new_zeros((0, *p.shape)) for name, p in params.items()}
        else:
            images, masks = (t.to(device, non_blocking=True) for t in chunk)
            if channels_last:
                images = to_channels_last(images)
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                grads, losses = per_sample_gradients(model, criterion, images, masks)
            value = float(losses.sum())
            bad = value if bad is None and not math.isfinite(value) else bad
            total, count = total + value, count + len(losses)
        # processes may hold different numbers of chunks: all of them decide together, before the last
        # chunk's step (the one that all-reduces), and stop with the weights untouched
        if last and not distributed.all_true(bad is None, device):
            raise NonFiniteLoss(bad if bad is not None else total)
        for name, p in params.items():
            p.grad_sample = grads[name]
        optimizer.signal_skip_step(do_skip=not last)
        optimizer.step()  # clips and sums; after the last chunk also adds noise and updates the weights
        optimizer.zero_grad(set_to_none=True)
    return total / count if count else 0.0


def _grouped(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        yield [next(batches) for _ in range(size)]


class PrivateTraining:
    """The DP side of a run: the DP optimizer, the step's sampling rate and noise, and the accountant.

    ``optimizer`` is wrapped (it keeps its parameter groups, so a schedule built on it still applies).
    The expected logical batch is ``batch_size * accumulate`` samples of the ``dataset_size`` per process
    (``batch_size`` is per process, as in non-private training).
    """

    def __init__(
        self,
        settings: PrivacyConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset_size: int,
        batch_size: int,
        accumulate: int,
        iterations: int,
    ) -> None:
        check_private_model(model)
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

        self.settings, self.delta = settings, settings.delta
        self.world = distributed.world_size()
        self.expected_batch = batch_size * accumulate * self.world
        if self.expected_batch > dataset_size:
            raise ConfigError(
                f"privacy: a logical batch (train.batch_size x train.accumulate x {self.world} processes = "
                f"{self.expected_batch}) is larger than the training set ({dataset_size} samples)"
            )
        self.sample_rate = self.expected_batch / dataset_size
        if settings.noise_multiplier is not None:
            self.noise_multiplier = settings.noise_multiplier
        else:
            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=settings.target_epsilon, target_delta=self.delta,
                sample_rate=self.sample_rate, steps=iterations, accountant=settings.accountant,
            )  # fmt: skip
        if self.delta > 1 / dataset_size:
            log.warning(
                "privacy.delta %g is above 1 / (training set size) = %g: a guarantee this weak allows "
                "releasing a few samples outright; choose delta well below 1/N",
                self.delta,
                1 / dataset_size,
            )
        # Several processes: each clips and sums its part of the logical batch, process 0 alone adds the
        # noise, and the sums are all-reduced, so the step equals one process's on the whole batch.
        self.optimizer = (DistributedDPOptimizer if self.world > 1 else DPOptimizer)(
            optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=settings.max_grad_norm,
            expected_batch_size=self.expected_batch / self.world, loss_reduction="mean",
        )  # fmt: skip
        self.accountant = create_accountant(settings.accountant)
        self._epsilons: dict[tuple, float] = {}  # accounting takes ~0.2 s: each history is computed once
        self._stop: tuple[int, float] | None = None  # (iteration, max_epsilon) where the budget ends the run
        log.info(
            "private training: noise multiplier %.4g, max grad norm %g, sample rate %.4g, delta %g, %s "
            "accountant%s",
            self.noise_multiplier,
            settings.max_grad_norm,
            self.sample_rate,
            self.delta,
            settings.accountant,
            "" if settings.poisson_sampling else " (no Poisson sampling: the accounting is approximate)",
        )

    def batches(self, cfg: Config, dataset: Any, loader: Any, iteration: int, pin: bool) -> Iterator[list]:
        """The logical batches from ``iteration`` on, each as a list of chunks: Poisson-sampled, or
        ``train.accumulate`` batches of ``loader`` without Poisson sampling."""
        t = cfg.train
        if self.settings.poisson_sampling:
            return poisson_batches(
                dataset, self.sample_rate, t.batch_size, cfg.seed, iteration, cfg.data.num_workers, pin,
                distributed.rank(), self.world,
            )  # fmt: skip
        return _grouped(train_batches(loader, iteration * t.accumulate), t.accumulate)

    def step(
        self,
        model: nn.Module,
        batches: Iterator[Sequence[Any]],
        criterion: nn.Module,
        amp: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> float:
        """One DP-SGD step (`private_step`) on the next logical batch of ``batches``, then accounted."""
        loss = private_step(model, next(batches), criterion, self.optimizer, amp, channels_last)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return loss

    def epsilon(self, extra_steps: int = 0) -> float:
        """The epsilon spent so far (at ``delta``), or after ``extra_steps`` more steps."""
        history = list(self.accountant.history)
        if extra_steps:
            history.append((self.noise_multiplier, self.sample_rate, extra_steps))
        if not history:
            return 0.0
        key = tuple(history)
        if key not in self._epsilons:
            from opacus.accountants import create_accountant

            accountant = create_accountant(self.settings.accountant)
            accountant.history = history
            self._epsilons[key] = float(accountant.get_epsilon(delta=self.delta))
        return self._epsilons[key]

    def steps_within(self, max_epsilon: float, limit: int) -> int:
        """The most further steps (at most ``limit``) after which the epsilon is still <= ``max_epsilon``."""
        if self.epsilon(limit) <= max_epsilon:
            return limit
        low, high = 0, limit  # epsilon(low) <= max_epsilon (or low == 0) < epsilon(high)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.epsilon(mid) <= max_epsilon else (low, mid)
        return low

    def budget_end(self, iteration: int, end: int) -> int | None:
        """The iteration at which ``privacy.max_epsilon`` stops a run now at ``iteration`` (None: no limit,
        or not before ``end``); logs when it will stop the run early."""
        limit = self.settings.max_epsilon
        if limit is None:
            return None
        allowed = self.steps_within(limit, end - iteration)
        self._stop = (iteration + allowed, limit) if iteration + allowed < end else None
        if self._stop is not None:
            log.warning(
                "privacy.max_epsilon %g allows %d more steps: training stops at iteration %d (epsilon %.4g)",
                limit, allowed, iteration + allowed, self.epsilon(allowed),
            )  # fmt: skip
        return iteration + allowed if self._stop is not None else None

    def log_stop(self, iteration: int, iterations: int) -> None:
        """Say so if ``privacy.max_epsilon`` ended the run at ``iteration`` (of ``iterations``)."""
        stop = self._stop
        if stop is not None and iteration == stop[0]:
            log.warning(
                "stopped at iteration %d of %d: the privacy budget is spent (epsilon %.4g at delta %g); one "
                "more step would spend epsilon %.4g > privacy.max_epsilon %g",
                iteration, iterations, self.epsilon(), self.delta, self.epsilon(1), stop[1],
            )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and the settings it was spent with, as plain numbers."""
        return {
            "accountant": self.settings.accountant,
            "history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history],
            "delta": float(self.delta),
            "epsilon": self.epsilon(),
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": float(self.sample_rate),
            "max_grad_norm": float(self.settings.max_grad_norm),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the accounting of a `state_dict` (the budget already spent is kept)."""
        if not math.isclose(state["sample_rate"], self.sample_rate):
            log.warning(
                "the checkpoint's steps were sampled at rate %.4g, this run samples at %.4g (batch size, "
                "accumulation, number of processes or dataset size changed); the accounting stays exact, "
                "but a target_epsilon was planned for one rate and will not be met",
                state["sample_rate"],
                self.sample_rate,
            )
        if state["accountant"] != self.settings.accountant:
            log.warning(
                "the checkpoint's privacy was accounted with %s; continuing its history with %s",
                state["accountant"],
                self.settings.accountant,
            )
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]


def make_private(
    cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, dataset_size: int
) -> PrivateTraining | None:
    """The run's `PrivateTraining` as ``cfg.privacy`` and ``cfg.train`` say; None if privacy is off."""
    if not cfg.privacy.enabled:
        return None
    t = cfg.train
    return PrivateTraining(
        cfg.privacy, model, optimizer, dataset_size, t.batch_size, t.accumulate, t.iterations
    )


def resume_privacy(privacy: PrivateTraining | None, ckpt: Mapping[str, Any], path: Any) -> None:
    """Restore the privacy accounting of checkpoint ``ckpt`` (file ``path``) into ``privacy``.

    Raises ConfigError where that would lose track of the budget: a private checkpoint resumed without
    privacy, or privacy switched on for a run that made non-private steps.
    """
    state = ckpt.get("privacy")
    if privacy is None and state is not None:
        raise ConfigError(
            f"{path} was trained with privacy (epsilon {state['epsilon']:.4g} spent); resuming it without "
            "privacy.enabled would void its guarantee: set privacy.enabled=true"
        )
    if privacy is not None and state is None and ckpt.get("step"):
        raise ConfigError(
            f"{path} was trained without privacy: its steps spent an unbounded budget, so privacy cannot "
            "be switched on now; start a new run"
        )
    if privacy is not None and state is not None:
        privacy.load_state_dict(state)
