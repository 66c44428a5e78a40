"""Atomic file writes: a temp file in the same folder, flushed and fsynced, then renamed into place."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "temp_files"]

# the temp file of ``<name>`` is ``.<name>.<8 hex digits>.tmp`` beside it
_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


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
    tmp = _temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every platform
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
