"""What several commands share: the process rank, and sizes written as HxW."""

from __future__ import annotations

import argparse
import os

__all__ = ["is_rank0", "size"]


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
