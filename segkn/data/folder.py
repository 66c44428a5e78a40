"""A user's own data: ``images/`` and ``masks/`` folders with matching stems and a class list in YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from segkn.data.base import IGNORE_INDEX, Sample, SegmentationDataset, Transform, default_palette
from segkn.data.errors import DatasetError
from segkn.data.io import IMAGE_SUFFIXES

__all__ = ["FolderDataset", "read_classes_file"]

_CLASSES_KEYS = ("classes", "palette")


def read_classes_file(path: str | Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Read ``classes: [names]`` and optional ``palette: [[r, g, b], ...]`` from a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"class file {path} not found; write it with `classes: [name, ...]` "
            "(and optionally `palette: [[r, g, b], ...]`)"
        )
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetError(f"class file {path} is not valid YAML: {err}") from err
    if not isinstance(content, Mapping):
        raise DatasetError(f"class file {path} must be a mapping with the key `classes: [name, ...]`")
    unknown = sorted(str(k) for k in content if k not in _CLASSES_KEYS)
    if unknown:
        raise DatasetError(
            f"class file {path}: unknown key(s) {', '.join(unknown)}; "
            f"allowed keys: {', '.join(_CLASSES_KEYS)}"
        )

    names = content.get("classes")
    if not isinstance(names, list) or not names:
        raise DatasetError(f"class file {path}: key `classes` must be a non-empty list of class names")
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise DatasetError(f"class file {path}: key `classes` must hold only non-empty strings, got {names}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"class file {path}: key `classes` repeats {', '.join(duplicates)}")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(
            f"class file {path}: key `classes` lists {len(names)} classes; at most "
            f"{IGNORE_INDEX} are supported (label {IGNORE_INDEX} means ignore)"
        )

    palette = content.get("palette")
    if palette is None:
        return tuple(names), default_palette(len(names))
    if not isinstance(palette, list) or len(palette) != len(names):
        raise DatasetError(
            f"class file {path}: key `palette` must be a list of {len(names)} [r, g, b] "
            "colours, one per class"
        )
    for index, colour in enumerate(palette):
        if (
            not isinstance(colour, list | tuple)
            or len(colour) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)
        ):
            raise DatasetError(
                f"class file {path}: key `palette` entry {index} ({colour!r}) must be "
                "[r, g, b] with integers 0..255"
            )
    return tuple(names), tuple((int(r), int(g), int(b)) for r, g, b in palette)


class FolderDataset(SegmentationDataset):
    """Images in ``root/images[/<split>]``, label PNGs with the same stems in ``root/masks[/<split>]``.

    Images may be png, jpg, jpeg, bmp, tif or tiff; masks are label-map PNGs (palette or grey, pixel
    value = class index, 255 = ignore). Classes and palette come from ``classes_file`` (default
    ``root/classes.yaml``, a relative path is taken from ``root``) and are set on the instance.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        classes_file: str | Path | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset root {self.root} does not exist; set data.root to the folder that "
                "holds images/, masks/ and classes.yaml"
            )
        classes_path = self.root / (classes_file if classes_file is not None else "classes.yaml")
        self.classes, self.palette = read_classes_file(classes_path)
        super().__init__(self._list_samples(), transform)

    def _list_samples(self) -> list[Sample]:
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(
                    f"{folder} not found: a folder dataset needs images/ and masks/ in {self.root}"
                )
        if self.split is not None:
            image_dir, mask_dir = image_dir / self.split, mask_dir / self.split
            for folder in (image_dir, mask_dir):
                if not folder.is_dir():
                    raise DatasetError(
                        f"split {self.split!r} not found: {folder} is missing; put the "
                        f"{self.split} images and masks in images/{self.split}/ and "
                        f"masks/{self.split}/"
                    )

        images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {image_dir}")
        samples, seen = [], {}
        for image in images:
            if image.stem in seen:
                raise DatasetError(
                    f"images {seen[image.stem]} and {image} share the stem {image.stem!r}; "
                    "each image needs a unique name"
                )
            seen[image.stem] = image
            mask = mask_dir / f"{image.stem}.png"
            if not mask.is_file():
                raise DatasetError(f"image {image} has no mask: expected {mask}; add it or remove the image")
            samples.append(Sample(image.stem, image, mask))
        return samples
