"""Augmentation and tensor conversion: albumentations pipelines built from a config mapping.

Keys read from the mapping (others are ignored; all optional):

- ``crop_size``: int or [h, w]; training crops this size (padding first: image 0, mask 255).
- ``scale_range``: [lo, hi], default [0.5, 2.0]; training rescales by a uniform factor in it.
- ``base_size``: int; when set, the shorter side is first resized to it (train and eval).
- ``cat_max_ratio``: float, default 1.0 (off); retry a crop (10 tries) while one class covers more.
- ``hflip``: probability of a horizontal flip, default 0.5.
- ``photometric``: true (default), false, or {brightness, contrast, saturation, hue, p}.
- ``eval_resize``: int (shorter side) or [h, w]; evaluation resizes the image to it.
- ``eval_keep_ratio``: bool, default false: with an [a, b] ``eval_resize``, evaluation resizes the image
  keeping its aspect ratio to the largest size whose long side is at most max(a, b) and short side at
  most min(a, b) (`fit_size`; mmsegmentation's ``Resize(scale=(2048, 512), keep_ratio=True)``).
- ``eval_resize_mask``: bool, default false: evaluation keeps masks at their stored size, so metrics
  are computed at full resolution (resize the logits to the mask's size).
- ``normalize``: "none" (default: [0, 1] pixels, what KN models take), "imagenet", or {mean, std}
  in [0, 1] units.

Randomness: a pipeline draws from one generator seeded from ``torch.initial_seed()`` the first time it
runs in a process (and again whenever that seed changes), so runs repeat given ``torch.manual_seed``
and every DataLoader worker (which torch seeds differently) draws its own stream.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop

from segkn.data.base import IGNORE_INDEX
from segkn.data.errors import DatasetError
from segkn.nn.geometry import to_pair

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TRANSFORM_KEYS",
    "CatMaxRatioCrop",
    "FitResize",
    "SegTransform",
    "build_transform",
    "fit_size",
    "image_to_tensor",
    "resolve_normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORM_KEYS = (
    "crop_size", "scale_range", "base_size", "cat_max_ratio", "hflip", "photometric",
    "eval_resize", "eval_keep_ratio", "eval_resize_mask", "normalize",
)  # fmt: skip
_PHOTOMETRIC_DEFAULTS = {"brightness": 0.25, "contrast": 0.5, "saturation": 0.5, "hue": 0.05, "p": 0.5}


class CatMaxRatioCrop(BaseCrop):
    """Random crop of ``height`` x ``width`` that retries (up to ``max_tries``) while one class fills
    more than ``cat_max_ratio`` of the crop's labelled pixels; the input must be at least crop-sized."""

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.height, self.width = height, width
        self.cat_max_ratio, self.ignore_index, self.max_tries = cat_max_ratio, ignore_index, max_tries

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        assert height >= self.height and width >= self.width, "pad to the crop size before cropping"
        mask = data.get("mask")
        for _ in range(self.max_tries):
            top = self.py_random.randint(0, height - self.height)
            left = self.py_random.randint(0, width - self.width)
            if mask is None or self.cat_max_ratio >= 1.0:
                break
            crop = mask[top : top + self.height, left : left + self.width]
            counts = np.bincount(crop.ravel(), minlength=self.ignore_index + 1)
            counts[self.ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
        return {"crop_coords": (left, top, left + self.width, top + self.height)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "max_tries")


def fit_size(height: int, width: int, bounds: Sequence[int]) -> tuple[int, int]:
    """The size (h, w) of an image rescaled, keeping its aspect ratio, to the largest size whose long side
    is at most ``max(bounds)`` and short side at most ``min(bounds)``, rounded as mmcv's ``rescale_size``."""
    factor = min(max(bounds) / max(height, width), min(bounds) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class FitResize(A.DualTransform):
    """Resize keeping the aspect ratio to fit ``bounds`` (`fit_size`): bilinear for the image, nearest
    for a mask."""

    def __init__(self, bounds: Sequence[int], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.bounds = tuple(int(b) for b in bounds)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"size": fit_size(*params["shape"][:2], self.bounds)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("bounds",)


def resolve_normalize(value: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Turn the ``normalize`` setting into (mean, std) arrays in [0, 1] units, or None for raw [0, 1]."""
    if value is None or value == "none":
        return None
    if value == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
    else:
        raise DatasetError(
            f"normalize: expected 'none', 'imagenet' or {{mean: [r, g, b], std: [r, g, b]}}, got {value!r}"
        )
    mean_a, std_a = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if mean_a.shape != (3,) or std_a.shape != (3,) or not (std_a > 0).all():
        raise DatasetError(f"normalize: mean and std need 3 values each and std > 0, got {value!r}")
    return mean_a, std_a


def image_to_tensor(image: np.ndarray, normalize: Any = "none") -> torch.Tensor:
    """Convert an H x W x 3 uint8 RGB image to a float32 3 x H x W tensor ([0, 1], then mean/std)."""
    stats = normalize if isinstance(normalize, tuple) else resolve_normalize(normalize)
    pixels = image.astype(np.float32) * np.float32(1.0 / 255.0)
    if stats is not None:
        mean, std = stats
        pixels = (pixels - mean) / std
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class SegTransform:
    """``(image HxWx3 uint8, mask HxW int) -> (float32 3xHxW tensor, int64 HxW tensor)``.

    Runs the albumentations pipeline ``augment`` (if any) on image and mask (on the image alone when
    ``augment_mask`` is false), then normalizes and converts to tensors.
    """

    def __init__(
        self, augment: A.Compose | None = None, normalize: Any = "none", augment_mask: bool = True
    ) -> None:
        self.augment = augment
        self.augment_mask = augment_mask
        self.normalize = resolve_normalize(normalize)
        self._seed: int | None = None

    def _reseed(self) -> None:
        seed = torch.initial_seed()
        if seed != self._seed:
            # One shared generator: Compose.set_random_seed would give every transform the same stream.
            self.augment.set_random_state(np.random.default_rng(seed), random.Random(seed))
            self._seed = seed

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            self._reseed()
            assert mask.min(initial=0) >= 0 and mask.max(initial=0) <= 255, "labels must fit in uint8"
            mask = mask.astype(np.uint8, copy=False)
            if self.augment_mask:
                out = self.augment(image=image, mask=mask)
                image, mask = out["image"], out["mask"]
            else:
                image = self.augment(image=image)["image"]
        return image_to_tensor(image, self.normalize), torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return f"SegTransform(augment={self.augment!r}, normalize={self.normalize is not None})"


def _pair(value: Any, key: str) -> tuple[int, int]:
    """A positive size from the config as (height, width); DatasetError naming ``key`` otherwise."""
    if isinstance(value, Sequence) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = None  # 2.5 or "8" is not a size
    try:
        return to_pair(value, key, positive=True)
    except ValueError:
        raise DatasetError(f"{key}: expected a positive int or [height, width], got {value!r}") from None


def _photometric(value: Any) -> A.ColorJitter | None:
    if value is False or value is None:
        return None
    settings = dict(_PHOTOMETRIC_DEFAULTS)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(settings))
        if unknown:
            raise DatasetError(
                f"photometric: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(settings)}"
            )
        settings.update(value)
    elif value is not True:
        raise DatasetError(f"photometric: expected true, false or a mapping, got {value!r}")
    b, c, s, h = (float(settings[k]) for k in ("brightness", "contrast", "saturation", "hue"))
    return A.ColorJitter(
        brightness=(max(0.0, 1 - b), 1 + b),
        contrast=(max(0.0, 1 - c), 1 + c),
        saturation=(max(0.0, 1 - s), 1 + s),
        hue=(-h, h),
        p=float(settings["p"]),
    )


def build_transform(cfg: Mapping[str, Any], train: bool) -> SegTransform:
    """Build the training (``train=True``) or evaluation pipeline described by ``cfg``."""
    steps: list[Any] = []
    if cfg.get("base_size") is not None:
        steps.append(
            A.SmallestMaxSize(
                max_size=_pair(cfg["base_size"], "base_size")[0], interpolation=cv2.INTER_LINEAR
            )
        )
    if not train:
        resize = cfg.get("eval_resize")
        if isinstance(resize, int) and not isinstance(resize, bool):
            steps.append(
                A.SmallestMaxSize(max_size=_pair(resize, "eval_resize")[0], interpolation=cv2.INTER_LINEAR)
            )
        elif resize is not None and cfg.get("eval_keep_ratio", False):
            steps.append(FitResize(_pair(resize, "eval_resize")))
        elif resize is not None:
            height, width = _pair(resize, "eval_resize")
            steps.append(A.Resize(height, width, interpolation=cv2.INTER_LINEAR))
        augment = A.Compose(steps) if steps else None
        return SegTransform(augment, cfg.get("normalize", "none"), bool(cfg.get("eval_resize_mask", False)))

    scale_range = cfg.get("scale_range", (0.5, 2.0))
    if not (
        isinstance(scale_range, Sequence)
        and len(scale_range) == 2
        and all(isinstance(v, int | float) for v in scale_range)
        and 0 < scale_range[0] <= scale_range[1]
    ):
        raise DatasetError(f"scale_range: expected [lo, hi] with 0 < lo <= hi, got {scale_range!r}")
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if (lo, hi) != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(lo - 1.0, hi - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    if cfg.get("crop_size") is not None:
        height, width = _pair(cfg["crop_size"], "crop_size")
        ratio = float(cfg.get("cat_max_ratio", 1.0))
        if not 0 < ratio <= 1:
            raise DatasetError(f"cat_max_ratio: expected a value in (0, 1], got {ratio}")
        steps.append(
            A.PadIfNeeded(
                min_height=height,
                min_width=width,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            )
        )
        steps.append(CatMaxRatioCrop(height, width, cat_max_ratio=ratio))
    flip = float(cfg.get("hflip", 0.5))
    if flip > 0:
        steps.append(A.HorizontalFlip(p=flip))
    jitter = _photometric(cfg.get("photometric", True))
    if jitter is not None:
        steps.append(jitter)
    augment = A.Compose(steps) if steps else None
    return SegTransform(augment, cfg.get("normalize", "none"))
