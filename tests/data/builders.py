"""Tiny datasets on disk in the real layouts, for tests: `from tests.data.builders import ...`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from segkn.data.base import default_palette

__all__ = [
    "ADE20K_LABELS",
    "CITYSCAPES_LABEL_IDS",
    "make_ade20k_tree",
    "make_cityscapes_tree",
    "make_folder_tree",
    "make_voc_tree",
    "write_image",
    "write_label_png",
    "write_palette_png",
]

# Label ids written into the fake gtFine masks: some evaluated (7 road, 8 sidewalk, 26 car, 33 bicycle),
# some ignored (0 unlabeled, 3 out of roi, 9 parking, 30 trailer).
CITYSCAPES_LABEL_IDS = (0, 3, 7, 8, 9, 26, 30, 33)

# Stored labels of the fake ADE20K annotations: 0 (other, ignored), the first, two middle and the last class.
ADE20K_LABELS = (0, 1, 2, 13, 75, 150)


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 array with cv2 (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), path


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write a greyscale ('L') label PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def write_palette_png(
    path: Path, labels: np.ndarray, palette: Sequence[tuple[int, int, int]] | None = None
) -> None:
    """Write a palette ('P') label PNG, VOC colour map by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    colours = palette if palette is not None else default_palette(256)
    image.putpalette([c for colour in colours for c in colour])
    image.save(path)


def _random_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _random_labels(rng: np.random.Generator, size: tuple[int, int], values: Sequence[int]) -> np.ndarray:
    """Blocks of 4x4 pixels with values drawn from ``values`` (every value appears when there is room)."""
    blocks = ((size[0] + 3) // 4, (size[1] + 3) // 4)
    choice = rng.choice(np.asarray(values), blocks)
    choice.flat[: len(values)] = values
    return np.kron(choice, np.ones((4, 4), dtype=choice.dtype))[: size[0], : size[1]]


def make_cityscapes_tree(
    root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    cities: Sequence[str] = ("aachen", "bochum"),
    per_city: int = 2,
    size: tuple[int, int] = (32, 64),
    train_ids: bool = False,
    test_labels: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``leftImg8bit/`` and ``gtFine/`` for the splits; ``labelTrainIds`` too when ``train_ids``.

    A ``test`` split gets no gtFine unless ``test_labels``. Returns ``root``.
    """
    from segkn.data.cityscapes import label_ids_to_train_ids

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits:
        for city in cities:
            for index in range(per_city):
                stem = f"{city}_{index:06d}_{19 + index:06d}"
                write_image(
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _random_image(rng, size)
                )
                if split == "test" and not test_labels:
                    continue
                label_ids = _random_labels(rng, size, CITYSCAPES_LABEL_IDS)
                gt = root / "gtFine" / split / city
                write_label_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
                if train_ids:
                    write_label_png(
                        gt / f"{stem}_gtFine_labelTrainIds.png", label_ids_to_train_ids(label_ids)
                    )
    return root


def make_voc_tree(
    root: str | Path,
    splits: Mapping[str, Sequence[str]] | None = None,
    size: tuple[int, int] = (24, 32),
    aug_ids: Sequence[str] | None = None,
    border: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``root/VOCdevkit/VOC2012`` with JPEG images, palette masks (255 border) and split lists.

    ``splits`` maps split names to image ids (default train: 3 ids, val: 2 ids). With ``aug_ids``,
    also ``SegmentationClassAug/`` grey masks and ``trainaug.txt`` for those ids. Returns the VOC2012 path.
    """
    splits = splits if splits is not None else {"train": ["2007_000032", "2007_000039", "2008_000002"],
                                                "val": ["2007_000033", "2009_000001"]}  # fmt: skip
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    all_ids = sorted({i for ids in splits.values() for i in ids} | set(aug_ids or ()))
    for image_id in all_ids:
        write_image(voc / "JPEGImages" / f"{image_id}.jpg", _random_image(rng, size))
        labels = _random_labels(rng, size, range(21))
        if border:
            labels[:border], labels[-border:], labels[:, :border], labels[:, -border:] = 255, 255, 255, 255
        if any(image_id in ids for ids in splits.values()):
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", labels)
        if aug_ids is not None and image_id in aug_ids:
            write_label_png(
                voc / "SegmentationClassAug" / f"{image_id}.png", np.where(labels == 255, 0, labels)
            )
    for split, ids in splits.items():
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    if aug_ids is not None:
        (lists / "trainaug.txt").write_text("".join(f"{i}\n" for i in aug_ids))
    return voc


def make_folder_tree(
    root: str | Path,
    splits: Sequence[str] | None = ("train", "val"),
    per_split: int = 3,
    classes: Sequence[str] = ("background", "cat", "dog"),
    palette: Sequence[Sequence[int]] | None = None,
    image_ext: str = ".png",
    size: tuple[int, int] = (20, 28),
    seed: int = 0,
) -> Path:
    """Write ``images/[<split>/]``, ``masks/[<split>/]`` (grey label PNGs, some 255) and ``classes.yaml``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    content: dict = {"classes": list(classes)}
    if palette is not None:
        content["palette"] = [list(c) for c in palette]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(content))
    for split in splits if splits is not None else [None]:
        sub = Path(split) if split is not None else Path()
        for index in range(per_split):
            stem = f"{split or 'img'}_{index:03d}"
            write_image(root / "images" / sub / f"{stem}{image_ext}", _random_image(rng, size))
            write_label_png(
                root / "masks" / sub / f"{stem}.png", _random_labels(rng, size, [*range(len(classes)), 255])
            )
    return root


def make_ade20k_tree(
    root: str | Path,
    splits: Mapping[str, int] | None = None,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
) -> Path:
    """Write ``root/ADEChallengeData2016``: ``images/<split>/*.jpg``, grey ``annotations/<split>/*.png``.

    ``splits`` maps the release's split folders to image counts (default training: 3, validation: 2);
    a ``testing`` split gets no annotations. Returns the ADEChallengeData2016 path.
    """
    splits = splits if splits is not None else {"training": 3, "validation": 2}
    ade = Path(root) / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    tags = {"training": "train", "validation": "val", "testing": "test"}
    for split, count in splits.items():
        for index in range(count):
            stem = f"ADE_{tags.get(split, split)}_{index + 1:08d}"
            write_image(ade / "images" / split / f"{stem}.jpg", _random_image(rng, size))
            if split != "testing":
                write_label_png(
                    ade / "annotations" / split / f"{stem}.png", _random_labels(rng, size, ADE20K_LABELS)
                )
    return ade
