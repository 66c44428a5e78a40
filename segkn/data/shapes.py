"""A synthetic dataset generated on the fly: textured, overlapping shapes whose class is their outline."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from segkn.data.base import Sample, SegmentationDataset, Transform
from segkn.data.errors import DatasetError

__all__ = [
    "DEFAULT_LENGTH",
    "DEFAULT_NUM_CLASSES",
    "DEFAULT_SIZE",
    "MIN_SIZE",
    "SHAPE_KINDS",
    "ShapesDataset",
    "write_shapes_folder",
]

SHAPE_KINDS = ("circle", "rectangle", "triangle", "ring", "star", "cross")
DEFAULT_SIZE = (128, 128)  # [h, w] of a generated image
MIN_SIZE = 32  # smallest side that still fits several shapes
DEFAULT_LENGTH = {"train": 2000, "val": 200}  # samples per split; other splits get the val length
DEFAULT_NUM_CLASSES = 5  # background + circle, rectangle, triangle, ring
_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
)  # fmt: skip
_MIN_VISIBLE = 0.6  # an earlier shape keeps at least this share of its area when a later one lands on it
_MIN_CONTRAST = 60.0  # a shape's colour differs from what lies beneath it by this much (max over RGB)


class ShapesDataset(SegmentationDataset):
    """Scenes of 2-6 shapes (circle, rectangle, triangle, ring, ...) on textured, noisy backgrounds.

    Nothing is read from disk: sample ``index`` of ``split`` is drawn from a generator seeded with
    ``(seed, split, index)``, so it is the same every time and train and val differ. Colours and
    textures are random per shape and never tell the class: a model must see the outline. Class 0 is
    background; ``num_classes - 1`` shape kinds are used, in the order of ``SHAPE_KINDS``.
    """

    classes = ("background", *SHAPE_KINDS[: DEFAULT_NUM_CLASSES - 1])
    palette = _PALETTE[:DEFAULT_NUM_CLASSES]

    def __init__(
        self,
        split: str = "train",
        size: int | Sequence[int] = DEFAULT_SIZE,
        length: int | None = None,
        num_classes: int = DEFAULT_NUM_CLASSES,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if not 2 <= num_classes <= len(SHAPE_KINDS) + 1:
            raise DatasetError(f"shapes: num_classes must be 2..{len(SHAPE_KINDS) + 1}, got {num_classes}")
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(height, width) < MIN_SIZE:
            raise DatasetError(f"shapes: size must be at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")
        if seed < 0:
            raise DatasetError(f"shapes: seed must be >= 0, got {seed}")
        if length is None:
            length = DEFAULT_LENGTH.get(split, DEFAULT_LENGTH["val"])
        if length < 1:
            raise DatasetError(f"shapes: length must be positive, got {length}")
        self.split, self.size, self.seed = split, (height, width), seed
        self.classes = ("background", *SHAPE_KINDS[: num_classes - 1])
        self.palette = _PALETTE[:num_classes]
        self._split_key = zlib.crc32(split.encode())
        super().__init__(_GeneratedSamples(split, length), transform)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self._split_key, index])
        return _draw_scene(rng, self.size, self.num_classes - 1)


class _GeneratedSamples(Sequence):
    """The sample list of a generated split, made on access: no files, only names."""

    def __init__(self, split: str, length: int) -> None:
        self.split, self.length = split, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return Sample(f"{self.split}_{index % self.length:06d}", None, None)


def _draw_scene(
    rng: np.random.Generator, size: tuple[int, int], num_kinds: int
) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    scale = min(height, width) / 128.0
    canvas = _background(rng, height, width, scale)
    instances = np.zeros((height, width), dtype=np.int16)
    kinds = [0]  # class of each instance id; id 0 is background
    areas = [0]

    count = int(rng.integers(2, 7) * height * width / min(height, width) ** 2)
    for _ in range(count):
        kind = int(rng.integers(1, num_kinds + 1))
        for _attempt in range(6):
            shape = _shape_mask(rng, SHAPE_KINDS[kind - 1], height, width, scale)
            area = int(np.count_nonzero(shape))
            if area < 20 * scale * scale:
                continue
            covered = np.bincount(instances[shape], minlength=len(kinds))
            visible = np.bincount(instances.ravel(), minlength=len(kinds))
            if all(visible[k] - covered[k] >= _MIN_VISIBLE * areas[k] for k in range(1, len(kinds))):
                break
        else:
            continue
        colour = _contrasting_colour(rng, canvas[shape].mean(axis=0))
        canvas[shape] = _texture(rng, colour, height, width, scale)[shape]
        instances[shape] = len(kinds)
        kinds.append(kind)
        areas.append(area)

    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(canvas, (3, 3), 0.7)
    canvas += rng.normal(0.0, rng.uniform(3.0, 10.0), canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    mask = np.asarray(kinds, dtype=np.int64)[instances]
    return image, mask


def _background(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """A smooth blend of two colours with a few thin background lines as distractors."""
    low = rng.random((int(rng.integers(2, 6)), int(rng.integers(2, 6))), dtype=np.float32)
    blend = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    blend = np.clip(blend, 0.0, 1.0)[:, :, None]
    first, second = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    canvas = (first * (1.0 - blend) + second * blend).astype(np.float32)
    for _ in range(int(rng.integers(0, 4))):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(canvas, p0, p1, colour, thickness=max(1, round(rng.uniform(1, 3) * scale)))
    return canvas


def _contrasting_colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.abs(colour - beneath).max() >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def _texture(
    rng: np.random.Generator, colour: np.ndarray, height: int, width: int, scale: float
) -> np.ndarray:
    """Fill for one shape: flat, two-tone stripes or speckle around ``colour``."""
    style = rng.random()
    fill = np.empty((height, width, 3), dtype=np.float32)
    fill[:] = colour
    if style < 0.35:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, 10) * scale
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)) > 0
        shift = rng.uniform(30, 70, 3) * rng.choice([-1, 1], 3)
        fill += stripes[:, :, None] * shift.astype(np.float32)
    elif style < 0.65:
        fill += rng.normal(0.0, 18.0, (height, width, 3)).astype(np.float32)
    return fill


def _shape_mask(rng: np.random.Generator, kind: str, height: int, width: int, scale: float) -> np.ndarray:
    """Boolean mask of one randomly placed, sized and rotated shape of the given kind."""
    radius = rng.uniform(12, 40) * scale
    cx = rng.uniform(0.5 * radius, width - 0.5 * radius)
    cy = rng.uniform(0.5 * radius, height - 0.5 * radius)
    theta = rng.uniform(0, 2 * math.pi)
    mask = np.zeros((height, width), dtype=np.uint8)
    shift = 4  # sub-pixel precision for cv2 drawing: coordinates are multiplied by 2**shift

    def polygon(points: np.ndarray) -> None:
        pts = np.round(points * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)

    def rotated(xy: np.ndarray) -> np.ndarray:
        c, s = math.cos(theta), math.sin(theta)
        return xy @ np.array([[c, s], [-s, c]]) + (cx, cy)

    if kind in ("circle", "ring"):
        centre = (round(cx * (1 << shift)), round(cy * (1 << shift)))
        cv2.circle(mask, centre, round(radius * (1 << shift)), 1, -1, cv2.LINE_8, shift)
        if kind == "ring":
            inner = radius * rng.uniform(0.45, 0.65)
            cv2.circle(mask, centre, round(inner * (1 << shift)), 0, -1, cv2.LINE_8, shift)
    elif kind == "rectangle":
        half_w, half_h = radius * rng.uniform(0.55, 1.0), radius * rng.uniform(0.55, 1.0)
        polygon(
            rotated(np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]]))
        )
    elif kind == "triangle":
        angles = np.arange(3) * (2 * math.pi / 3) + rng.uniform(-0.25, 0.25, 3)
        radii = radius * rng.uniform(0.9, 1.1, 3)
        polygon(rotated(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)))
    elif kind == "star":
        angles = np.arange(10) * (math.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.55))
        polygon(rotated(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)))
    elif kind == "cross":
        arm, half_t = radius, radius * rng.uniform(0.22, 0.32)
        polygon(rotated(np.array([[-arm, -half_t], [arm, -half_t], [arm, half_t], [-arm, half_t]])))
        polygon(rotated(np.array([[-half_t, -arm], [half_t, -arm], [half_t, arm], [-half_t, arm]])))
    else:  # pragma: no cover - kinds come from SHAPE_KINDS
        raise AssertionError(kind)
    return mask.astype(bool)


def write_shapes_folder(
    out: str | Path,
    split: str = "test",
    count: int = 8,
    size: tuple[int, int] = (64, 64),
    num_classes: int = 3,
    seed: int = 0,
) -> list[Path]:
    """Write ``count`` shapes scenes of ``split`` as a folder dataset; return the image files.

    Layout: ``out/images/<split>/shapes_<split>_NNNN.png``, the label maps under ``out/masks/<split>/``
    and ``out/classes.yaml``, which ``data.type: folder`` reads; the images are also inputs for
    ``segkn infer``. A split other than train and val holds scenes no demo run has seen.
    """
    from segkn.data.io import write_png

    dataset = ShapesDataset(split, size, count, num_classes, seed)
    out = Path(out)
    images = []
    for index in range(count):
        image, mask = dataset.load(index)
        name = f"shapes_{split}_{index:04d}.png"
        write_png(out / "masks" / split / name, mask)
        write_png(out / "images" / split / name, image)
        images.append(out / "images" / split / name)
    classes = {"classes": list(dataset.classes), "palette": [list(c) for c in dataset.palette]}
    (out / "classes.yaml").write_text(yaml.safe_dump(classes, default_flow_style=None, sort_keys=False))
    return images
