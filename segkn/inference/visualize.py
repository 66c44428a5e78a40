"""Colour masks and overlays of label maps, in a dataset's palette (the colouring lives in segkn.data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segkn.data.base import IGNORE_INDEX
from segkn.data.palette import colorize, palette_table

__all__ = ["colorize", "overlay", "palette_table"]


def overlay(
    image: np.ndarray, label_map: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """``image`` (H x W x 3 uint8 RGB) blended with the colour mask: ``(1 - alpha) * image + alpha * colour``.

    Ignored pixels (255) keep the image as it is.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must lie in [0, 1], got {alpha}")
    if image.shape[:2] != np.shape(label_map) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"overlay needs an H x W x 3 image and an H x W label map of the same size, got {image.shape} "
            f"and {np.shape(label_map)}"
        )
    colour = colorize(label_map, palette).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    ignored = np.asarray(label_map) == IGNORE_INDEX
    out[ignored] = image[ignored]
    return out
