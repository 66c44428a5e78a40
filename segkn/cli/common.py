"""What several commands share: the process rank, sizes written as HxW, output paths checked up front."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["check_output_path", "is_rank0", "size"]


def is_rank0() -> bool:
    """True unless torchrun started this process as a rank other than 0 (only rank 0 prints results)."""
    return os.environ.get("RANK", "0") == "0"


def size(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) as a pair of positive ints, for argparse."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size HxW such as 512x1024, got {text!r}")
    return parts[0], parts[1]


def check_output_path(path: str | Path, option: str, folder: bool) -> Path:
    """``path`` if the command can write it as a folder (``folder``) or a file; else a ValueError that
    names ``option`` and what is in the way, raised before any work whose results would have no place."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        if folder:
            raise ValueError(
                f"{option} {path}: a file is there, not a folder; name a folder (made if missing)"
            )
        raise ValueError(f"{option} {path}: a folder is there; name the file to write")
    # the nearest folder that exists, where the writing (or the making of folders) starts
    base = path if folder and path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not base.is_dir():
        raise ValueError(
            f"{option} {path}: {base} is a file, not a folder, so nothing can be written under it"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: no permission to write in {base}")
    return path


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """The ``--no-progress`` switch of train, eval and infer."""
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bars (redirected output never has them: it gets plain log lines)",
    )  # fmt: skip
