"""The dataset base class: subclasses list their samples, the base loads, checks and transforms them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from segkn.data.errors import DatasetError
from segkn.data.io import read_image, read_mask

__all__ = ["IGNORE_INDEX", "Sample", "SegmentationDataset", "Transform", "default_palette"]

IGNORE_INDEX = 255

Transform = Callable[[np.ndarray, np.ndarray], tuple]
"""A callable ``(image HxWx3 uint8, mask HxW int64) -> (image, mask)``, e.g. ``SegTransform``."""


@dataclass(frozen=True)
class Sample:
    """One entry of a dataset: a unique name for outputs, its image file and its mask file (or None)."""

    name: str
    image: Path | None
    mask: Path | None


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Return n distinct colours, deterministic (the bit-spreading scheme of the VOC colour map)."""
    colours = []
    for index in range(n):
        r = g = b = 0
        code = index
        for bit in range(7, -1, -1):
            r |= (code & 1) << bit
            g |= ((code >> 1) & 1) << bit
            b |= ((code >> 2) & 1) << bit
            code >>= 3
        colours.append((r, g, b))
    return tuple(colours)


class SegmentationDataset(Dataset):
    """Base of all segkn datasets.

    Items are ``(image, mask)``: before a transform an H x W x 3 uint8 RGB array and an H x W int64
    array with ``255`` = ignore; after ``SegTransform`` a float32 3 x H x W tensor and an int64 H x W
    tensor. Subclasses fill ``self.samples`` (a sequence of ``Sample``) and set ``classes`` and
    ``palette``; ``load_mask`` may be overridden to map stored ids to class indices.
    """

    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __init__(self, samples: Sequence[Sample], transform: Transform | None = None) -> None:
        self.samples = samples
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1, plus 255 = ignore)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        """Unique name of sample ``index`` (file stem or id), for per-image outputs."""
        return self.samples[index].name

    def load_image(self, sample: Sample) -> np.ndarray:
        """Read the H x W x 3 uint8 RGB image of a sample."""
        assert sample.image is not None
        return read_image(sample.image)

    def load_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        """Read the H x W int64 label map of a sample; all-ignore when it has no mask file."""
        if sample.mask is None:
            return np.full(shape, IGNORE_INDEX, dtype=np.int64)
        return read_mask(sample.mask)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and check sample ``index``, untransformed."""
        sample = self.samples[index]
        image = self.load_image(sample)
        mask = self.load_mask(sample, image.shape[:2])
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {sample.image} "
                f"is {image.shape[1]}x{image.shape[0]}; masks must have the size of their image"
            )
        self.check_labels(mask, sample)
        return image, mask

    def check_labels(self, mask: np.ndarray, sample: Sample) -> None:
        """Raise DatasetError when the mask holds values that are neither a class index nor 255."""
        bad = (mask < 0) | ((mask >= self.num_classes) & (mask != IGNORE_INDEX))
        if bad.any():
            values = np.unique(mask[bad])
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise DatasetError(
                f"mask {sample.mask} has label values {shown} outside the {self.num_classes} classes "
                f"(0..{self.num_classes - 1}, 255 = ignore); fix the mask or the class list"
            )

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        image, mask = self.load(index % len(self))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"
