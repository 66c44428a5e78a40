"""One training process per run directory: an OS lock on ``<run dir>/.lock`` for the life of the run.

The lock is a POSIX record lock (``fcntl.lockf``): the operating system releases it when the process
ends in any way, kill -9 included, so a crashed run never blocks ``--resume``; and it is held by the
training process alone, not by the loader workers it forks (which could outlive a killed parent for a
few seconds). Holding it, the run also removes the temp files that an earlier process, killed while
writing a checkpoint, left behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segkn.atomic import temp_files
from segkn.config import ConfigError

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RUN_FILES", "RunDirectoryBusy", "lock_run_dir"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
RUN_FILES = ("last.pth", "best.pth", "config.yaml")  # what a training run writes atomically

# A POSIX lock is per process: a second lock of the same file from this process would succeed, and
# closing it would drop the first. The run directories this process holds are kept here.
_HELD: set[Path] = set()


class RunDirectoryBusy(ConfigError):
    """Another training process holds the run directory; the message names its pid."""


def _busy(run_dir: Path, holder: str) -> RunDirectoryBusy:
    return RunDirectoryBusy(
        f"{run_dir} is in use by another training process ({holder}); wait for it to end or stop it, "
        "or choose another --run-dir or name"
    )


def _holder(fd: int) -> str:
    """What the lock file says about its holder: ``pid N`` as it wrote it."""
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _acquire(path: Path, run_dir: Path) -> int | None:
    """Open and lock ``path``; the descriptor. RunDirectoryBusy if another process holds it.

    None (with a warning) where the file system has no locks.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = _holder(fd)
            os.close(fd)
            raise _busy(run_dir, holder) from None
        except OSError as err:
            os.close(fd)
            log.warning("cannot lock %s (%s): a second run in %s would not be stopped", path, err, run_dir)
            return None
        # the last holder removes the file as it lets go: lock the file that is in place, not its ghost
        try:
            in_place = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            in_place = False
        if in_place:
            return fd
        os.close(fd)


@contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` (created if needed) for the block; remove the stale temp files of its checkpoints.

    Raises RunDirectoryBusy, naming the holder's pid, when another process (or this one) holds it. On
    leaving, the lock file is removed, and so are the folders this call created if they stayed empty.
    """
    run_dir = Path(run_dir)
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:
        raise _busy(run_dir, f"pid {os.getpid()}, this process")
    path = run_dir / LOCK_FILE
    fd = _acquire(path, run_dir) if fcntl is not None else None
    _HELD.add(key)
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        stale = temp_files(run_dir, RUN_FILES)  # no writer of this run is alive: every one is stale
        for temp in stale:
            temp.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temp file(s) left by an interrupted write: %s", len(stale), stale[0].name)
        yield
    finally:
        _HELD.discard(key)
        if fd is not None:
            path.unlink(missing_ok=True)  # while still locked: see _acquire
            os.close(fd)
        for folder in created:  # a run that failed before writing anything leaves no folders
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
