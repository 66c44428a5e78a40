"""Progress that reads well where it goes: a tqdm bar on a terminal, plain log lines elsewhere.

Redirected to a file (cluster jobs, ``nohup``, ``docker logs``) a tqdm bar is a stream of
carriage-return frames on one line; there `progress_bar` logs a line now and then instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

__all__ = ["LOG_EVERY_S", "LogLines", "interactive", "progress_bar"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # seconds between two plain progress lines


def interactive() -> bool:
    """True when stderr (where progress goes) is a terminal."""
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class LogLines:
    """The part of tqdm's interface segkn uses (iterate, update, set_postfix, close), as log lines.

    A line such as ``eval 120/500 (24%, 3.1 it/s)`` is logged at most every ``every`` seconds; none for
    a job that ends sooner.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        every: float = LOG_EVERY_S,
    ) -> None:
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self._initial = total, initial, initial
        self._start = self._last = time.monotonic()
        self.postfix = ""

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LogLines was given nothing to iterate"
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; log a line if ``every`` seconds passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """The progress line: description, count (of total, percent), rate and postfix."""
        elapsed = (now if now is not None else time.monotonic()) - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%" if self.total else f"{self.n} ("
        text = f"{self.desc} {count}, {rate:.3g} {self.unit}/s)"
        return f"{text} {self.postfix}" if self.postfix else text

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = "  ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    enabled: bool = True,
    lines: bool = True,
    every: float = LOG_EVERY_S,
    **tqdm_kwargs: Any,
) -> Any:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal; otherwise `LogLines`.

    Off the terminal, ``lines=False`` (for a caller that logs its own lines, as training does) or
    ``enabled=False`` gives a silent counter. tqdm's own ``disable`` is folded into ``enabled``.
    """
    enabled = enabled and not tqdm_kwargs.pop("disable", False)
    if enabled and interactive():
        return tqdm(iterable, **tqdm_kwargs)
    keep = {key: tqdm_kwargs[key] for key in ("total", "desc", "unit", "initial") if key in tqdm_kwargs}
    return LogLines(iterable, every=every if enabled and lines else float("inf"), **keep)
