"""Cityscapes fine annotations (gtFine), evaluated on the 19 standard train ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segkn.data.base import IGNORE_INDEX, Sample, SegmentationDataset, Transform
from segkn.data.errors import DatasetError
from segkn.data.io import read_mask

__all__ = ["LABEL_IDS", "CityscapesDataset", "label_ids_to_train_ids", "train_ids_to_label_ids"]

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

# The Cityscapes label id of each of the 19 evaluated classes, in train-id order: the one copy of the table.
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# Lookup table label id -> train id for every value a uint8/uint16 PNG can hold; the rest is ignored.
_LABEL_TO_TRAIN = np.full(65536, IGNORE_INDEX, dtype=np.int64)
_LABEL_TO_TRAIN[list(LABEL_IDS)] = np.arange(len(LABEL_IDS))


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes labelIds array to train ids 0..18, everything else (-1 included) to 255."""
    label_ids = np.asarray(label_ids)
    valid = (label_ids >= 0) & (label_ids < len(_LABEL_TO_TRAIN))
    return np.where(valid, _LABEL_TO_TRAIN[np.where(valid, label_ids, 0)], IGNORE_INDEX).astype(np.int64)


def train_ids_to_label_ids(train_ids: np.ndarray, label_ids: Sequence[int] = LABEL_IDS) -> np.ndarray:
    """Map train ids to a dataset's own label ids (train id i -> ``label_ids[i]``, by default the
    Cityscapes labelIds, e.g. for benchmark submissions); any other value (255 = ignore) -> 0."""
    train_ids = np.asarray(train_ids)
    table = np.asarray(label_ids, dtype=np.int64)
    valid = (train_ids >= 0) & (train_ids < len(table))
    return np.where(valid, table[np.where(valid, train_ids, 0)], 0)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes: ``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` with ``gtFine`` masks.

    A ``*_gtFine_labelTrainIds.png`` beside the ``*_gtFine_labelIds.png`` is used as is; otherwise the
    labelIds are mapped to train ids with the official table. For ``split="test"`` masks may be
    missing (the public test set has none): such samples get an all-255 mask.
    """

    classes = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    )  # fmt: skip
    palette = (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    )  # fmt: skip
    train_id_to_label_id = np.array(LABEL_IDS, dtype=np.int64)

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.split = split
        super().__init__(self._list_samples(), transform)

    def _list_samples(self) -> list[Sample]:
        image_root = self.root / "leftImg8bit"
        if not self.root.is_dir():
            raise DatasetError(
                f"Cityscapes root {self.root} does not exist; set data.root to the folder "
                "that holds leftImg8bit/ and gtFine/"
            )
        if not image_root.is_dir():
            raise DatasetError(
                f"{image_root} not found: data.root must be the Cityscapes folder that holds "
                "leftImg8bit/ and gtFine/"
            )
        split_dir = image_root / self.split
        if not split_dir.is_dir():
            found = sorted(p.name for p in image_root.iterdir() if p.is_dir())
            raise DatasetError(
                f"Cityscapes split {self.split!r} not found: {split_dir} is missing "
                f"(splits present: {', '.join(found) or 'none'})"
            )
        label_dir = self.root / "gtFine" / self.split
        if self.split != "test" and not label_dir.is_dir():
            raise DatasetError(
                f"Cityscapes annotations not found: {label_dir} is missing; unpack "
                "gtFine_trainvaltest.zip into data.root"
            )

        samples = []
        for image in sorted(split_dir.glob(f"*/*{_IMAGE_SUFFIX}")):
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            city_labels = label_dir / image.parent.name
            train_ids = city_labels / f"{stem}{_TRAIN_IDS_SUFFIX}"
            label_ids = city_labels / f"{stem}{_LABEL_IDS_SUFFIX}"
            if train_ids.is_file():
                mask = train_ids
            elif label_ids.is_file():
                mask = label_ids
            elif self.split == "test":
                mask = None
            else:
                raise DatasetError(
                    f"image {image} has no mask: expected {label_ids} "
                    f"(or {train_ids.name}); restore it or remove the image"
                )
            samples.append(Sample(stem, image, mask))
        if not samples:
            raise DatasetError(f"no *{_IMAGE_SUFFIX} images found under {split_dir}/<city>/")
        return samples

    def load_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        if sample.mask is None or sample.mask.name.endswith(_TRAIN_IDS_SUFFIX):
            return super().load_mask(sample, shape)
        return label_ids_to_train_ids(read_mask(sample.mask))
