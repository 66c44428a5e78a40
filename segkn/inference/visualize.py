"""Colour masks and overlays of label maps, in a dataset's palette."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segkn.data.base import IGNORE_INDEX, default_palette

__all__ = ["colorize", "overlay", "palette_table"]


def palette_table(palette: Sequence[Sequence[int]], num_labels: int = 256) -> np.ndarray:
    """A (num_labels, 3) uint8 lookup table: the palette, then distinct default colours; 255 is black."""
    size = max(num_labels, len(palette), IGNORE_INDEX + 1)
    table = np.asarray(default_palette(size), dtype=np.uint8)
    if len(palette):
        colours = np.asarray(palette, dtype=np.int64)
        if colours.ndim != 2 or colours.shape[1] != 3 or colours.min() < 0 or colours.max() > 255:
            raise ValueError(f"a palette is a list of [r, g, b] colours in 0..255, got shape {colours.shape}")
        table[: len(colours)] = colours.astype(np.uint8)
    if len(palette) <= IGNORE_INDEX:
        table[IGNORE_INDEX] = 0
    return table


def colorize(label_map: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """An H x W x 3 uint8 RGB image with each label painted in its palette colour (ignore = black)."""
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"a label map is H x W, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("label maps hold non-negative class indices")
    top = int(labels.max()) + 1 if labels.size else 0
    return palette_table(palette, top)[labels]


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
