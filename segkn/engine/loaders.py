"""Datasets and loaders for training and evaluation, built from a Config.

Training draws are reproducible: epoch ``e`` of a run with seed ``s`` visits a permutation fixed by
``(s, e)``, and every draw augments its sample with a generator seeded from ``(s, e, position)``. The
batches a run sees therefore depend neither on ``num_workers`` nor on when the run was resumed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from segkn.config import Config
from segkn.data import SegmentationDataset, build_dataset, build_transform, data_settings

__all__ = [
    "SeededDraws",
    "ShardSampler",
    "TrainSampler",
    "build_eval_loader",
    "build_split",
    "build_train_loader",
    "list_collate",
    "poisson_batches",
    "train_batches",
    "worker_errors_unwrapped",
]


def build_split(cfg: Config, split: str, train: bool) -> SegmentationDataset:
    """Dataset ``split`` with the training (``train=True``) or evaluation transform."""
    settings = data_settings(cfg.data)
    return build_dataset(settings, split, build_transform(settings, train=train))


_ORDER, _WORKERS, _DRAW, _POISSON = 0, 1, 2, 3  # what a derived seed is for


def _derived_seed(seed: int, purpose: int, epoch: int, position: int = 0) -> int:
    """A 32-bit seed mixed from the run's seed, a purpose tag, the epoch and a draw position."""
    entropy = [seed & (2**64 - 1), purpose, epoch, position]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class TrainSampler(Sampler):
    """Shuffled draws ``(index, sample_seed)`` for one rank; the epoch's order depends only on (seed, epoch).

    Every rank takes ``len(dataset) // world_size`` samples of the epoch (the tail is dropped so all
    ranks step together); ``set_epoch(epoch, start)`` begins the next pass ``start`` draws in, which
    is how a resumed run skips what it had already consumed.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.length, self.seed, self.rank, self.world_size, self.shuffle = (
            length,
            seed,
            rank,
            world_size,
            shuffle,
        )
        self.per_rank = length // world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the pass to iterate next and the draw to begin at."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_derived_seed(self.seed, _ORDER, self.epoch))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        for position in range(self.start, self.per_rank):
            draw = position * self.world_size + self.rank  # position in the epoch, shared by all ranks
            yield order[draw], _derived_seed(self.seed, _DRAW, self.epoch, draw)


class SeededDraws(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is sample ``index`` augmented from ``seed``.

    segkn transforms seed their generator from ``torch.initial_seed()``; the CPU generator is reseeded
    for the call and restored afterwards, so the caller's random state is untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # torch seeds each worker from the loader's generator
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Loader of ``batch_size`` draws per step from a ``TrainSampler``; partial batches are dropped."""
    sampler = TrainSampler(len(dataset), seed, rank, world_size)  # type: ignore[arg-type]
    return DataLoader(
        SeededDraws(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),  # keeps the global generator out of the loader
        persistent_workers=num_workers > 0,
    )


def train_batches(loader: DataLoader, consumed: int = 0) -> Iterator[Any]:
    """Batches of ``loader`` without end, epoch after epoch, after skipping the first ``consumed``."""
    sampler = loader.sampler
    assert isinstance(sampler, TrainSampler) and loader.batch_size
    per_epoch = sampler.per_rank // loader.batch_size
    assert per_epoch > 0, "fewer samples than one batch"
    epoch, skip = divmod(consumed, per_epoch)
    while True:
        sampler.set_epoch(epoch, start=skip * loader.batch_size)
        loader.generator.manual_seed(_derived_seed(sampler.seed, _WORKERS, epoch))  # type: ignore[union-attr]
        with worker_errors_unwrapped():
            yield from loader
        epoch, skip = epoch + 1, 0


class PoissonSteps(Sampler):
    """Poisson-sampled steps for DP-SGD: in step ``t`` each sample joins with probability ``sample_rate``,
    drawn from a generator seeded by (seed, t); the step's draws come in chunks of at most ``batch_size``.

    Yields the chunks of every step from ``start`` on, forever (a step with no sample: one empty chunk).
    The draws depend only on (seed, step), so a resumed run sees the steps an uninterrupted one would.
    With ``world_size`` processes, every process makes the same draw over the whole set and keeps the
    samples ``i`` with ``i % world_size == rank``: the processes' batches together are exactly the one
    Poisson sample of a single process.
    """

    def __init__(
        self,
        length: int,
        sample_rate: float,
        batch_size: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.length, self.sample_rate, self.batch_size = length, sample_rate, batch_size
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size

    def chunks(self, step: int) -> list[list[tuple[int, int]]]:
        """This process's draws ``(index, sample_seed)`` of ``step``, in chunks of at most ``batch_size``."""
        g = torch.Generator().manual_seed(_derived_seed(self.seed, _POISSON, step))
        joined = torch.rand(self.length, generator=g) < self.sample_rate
        chosen = joined[self.rank :: self.world_size].nonzero().flatten().mul(self.world_size).add(self.rank)
        chosen = chosen.tolist()
        draws = [(i, _derived_seed(self.seed, _DRAW, step, i)) for i in chosen]
        return [draws[i : i + self.batch_size] for i in range(0, len(draws), self.batch_size)] or [[]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while True:
            yield from self.chunks(step)
            step += 1


def _collate_or_none(batch: Sequence[Any]) -> Any:
    return default_collate(batch) if batch else None


def poisson_batches(
    dataset: Dataset,
    sample_rate: float,
    batch_size: int,
    seed: int,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[list[Any]]:
    """Each step's batch (this process's part, see `PoissonSteps`) from ``start`` on as a list of chunks
    ``(images, masks)`` (None: no sample)."""
    steps = PoissonSteps(len(dataset), sample_rate, batch_size, seed, start, rank, world_size)  # type: ignore[arg-type]
    loader = DataLoader(
        SeededDraws(dataset),
        batch_sampler=steps,
        num_workers=num_workers,
        collate_fn=_collate_or_none,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    with worker_errors_unwrapped():
        chunks = iter(loader)
        step = start
        while True:
            yield [next(chunks) for _ in steps.chunks(step)]
            step += 1


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: each sample on exactly one rank, no padding duplicates."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def list_collate(batch: Sequence[Any]) -> list[Any]:
    """Keep a batch as a list of samples (evaluation images may differ in size)."""
    return list(batch)


def build_eval_loader(
    dataset: Dataset, batch_size: int = 1, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Loader over this rank's shard of ``dataset``, in order, batches as lists of (image, mask)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=list_collate,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(0),
    )


# torch re-raises an error of a loader worker as "Caught <Type> in DataLoader worker process <n>.\nOriginal
# Traceback (most recent call last): ..." with the worker's whole traceback as the message
_WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _original_error(err: Exception) -> Exception | None:
    """The error a loader worker raised, rebuilt from torch's wrapped one: None if ``err`` is not such."""
    text = str(err)
    if not _WORKER_ERROR.match(text):
        return None
    kind = type(err)
    # the traceback text ends with "<module>.<Type>: <message>" ("<Type>: ..." for builtins)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            message = text[at + len(name) + 3 :].rstrip()
            break
    else:
        return None
    try:
        return kind(message)
    except Exception:
        return None


@contextmanager
def worker_errors_unwrapped() -> Iterator[None]:
    """Re-raise an error from a DataLoader worker as the worker raised it: its type and message only.

    With ``num_workers > 0`` a bad data file then gives the same one-line error as without workers.
    """
    try:
        yield
    except Exception as err:
        original = _original_error(err)
        if original is None:
            raise
        raise original from None
