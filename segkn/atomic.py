"""Atomic file writes: a temp file in the same folder, flushed and fsynced, then renamed into place."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "commit_temp", "temp_beside", "temp_files"]

# the temp file of ``<name>`` is ``.<name>.<8 hex digits>.tmp`` beside it
_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


def temp_beside(path: str | Path, keep_suffix: bool = False) -> Path:
    """A new temp file name for a write to ``path``: ``.<name>.<8 hex digits>.tmp`` in the same folder.

    ``keep_suffix`` appends ``path``'s suffix (``.clip.mp4.1a2b3c4d.tmp.mp4``), for writers that pick the
    file format by the name, such as OpenCV's video writer.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix if keep_suffix else ''}")


def commit_temp(tmp: Path, path: Path) -> None:
    """Flush the finished, closed file ``tmp`` to disk and rename it to ``path``, durably where possible."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; not possible on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def temp_files(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """The temp files of `atomic_open` writes to ``folder/<name>`` for ``names`` (``.last.pth.1a2b3c4d.tmp``).

    A writer removes its temp file when it finishes or fails; one that is left was abandoned by a process
    that was killed while writing (or belongs to a write in progress).
    """
    folder, wanted = Path(folder), set(names)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _TEMP.fullmatch(path.name)
        if match and match["name"] in wanted and path.is_file():
            found.append(path)
    return sorted(found)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file for writing (``"w"`` text or ``"wb"``); on success it replaces ``path``.

    If the block raises, the temp file is removed and ``path`` is left as it was: a reader never
    sees a half-written file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, mode.replace("w", "x"), **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
