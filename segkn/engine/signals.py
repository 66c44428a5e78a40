"""SIGTERM (what schedulers, ``kill`` and ``docker stop`` send) as a request to stop after saving.

While `sigterm_requests` is active, SIGTERM only sets a flag; the trainer reads it after each step,
saves last.pth and ends with `TrainingTerminated`. A second SIGTERM ends the process at once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["EXIT_CODE", "StopRequest", "TrainingTerminated", "sigterm_requests"]

EXIT_CODE = 128 + signal.SIGTERM  # 143, as the shell reports a process that SIGTERM ended


class TrainingTerminated(KeyboardInterrupt):
    """SIGTERM ended the run after last.pth was saved; the message says where the run stands.

    A KeyboardInterrupt, as it is an interruption from outside: handlers of errors let it pass.
    ``exit_code`` is what the command line exits with.
    """

    exit_code = EXIT_CODE


@dataclass
class StopRequest:
    """Whether a SIGTERM came while `sigterm_requests` was active."""

    requested: bool = False


@contextmanager
def sigterm_requests() -> Iterator[StopRequest]:
    """Within the block SIGTERM sets ``requested`` on the yielded object instead of ending the process.

    The previous handler is restored on leaving. Outside the main thread, where Python cannot set signal
    handlers, SIGTERM keeps its action and ``requested`` stays False. Processes forked within the block
    (loader workers) ignore SIGTERM: a scheduler that signals every process of a job would otherwise end
    them under the step, and they end with their parent.
    """
    request, owner = StopRequest(), os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            return
        request.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        yield request
        return
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
