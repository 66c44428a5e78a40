"""Label maps in colour: a dataset's palette as a lookup table, and label maps painted with it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segkn.data.base import IGNORE_INDEX, default_palette

__all__ = ["NEUTRAL_COLOURS", "colorize", "ignore_colour", "palette_table"]

# Candidates for ignored pixels (255), in order: black, then greys.
NEUTRAL_COLOURS = ((0, 0, 0), (128, 128, 128), (64, 64, 64), (192, 192, 192))


def ignore_colour(palette: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The colour of ignored pixels (255): black, or the first grey of `NEUTRAL_COLOURS` that the palette
    does not use (VOC and shapes paint their background black: grey 128 for shapes, 64 for VOC)."""
    used = {tuple(int(v) for v in colour) for colour in palette}
    return next((c for c in NEUTRAL_COLOURS if c not in used), NEUTRAL_COLOURS[0])


def palette_table(palette: Sequence[Sequence[int]], num_labels: int = 256) -> np.ndarray:
    """A (num_labels, 3) uint8 lookup table: the palette, then distinct default colours; 255 (ignore) is
    black, or grey where the palette uses black (`ignore_colour`)."""
    size = max(num_labels, len(palette), IGNORE_INDEX + 1)
    table = np.asarray(default_palette(size), dtype=np.uint8)
    if len(palette):
        colours = np.asarray(palette, dtype=np.int64)
        if colours.ndim != 2 or colours.shape[1] != 3 or colours.min() < 0 or colours.max() > 255:
            raise ValueError(f"a palette is a list of [r, g, b] colours in 0..255, got shape {colours.shape}")
        table[: len(colours)] = colours.astype(np.uint8)
    if len(palette) <= IGNORE_INDEX:
        table[IGNORE_INDEX] = ignore_colour(palette)
    return table


def colorize(label_map: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """An H x W x 3 uint8 RGB image, each label painted in its palette colour (ignore: `ignore_colour`)."""
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"a label map is H x W, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("label maps hold non-negative class indices")
    top = int(labels.max()) + 1 if labels.size else 0
    return palette_table(palette, top)[labels]
