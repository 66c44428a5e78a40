"""Dataset factory: `build_dataset(data_cfg, split)` builds the dataset that `data_cfg["type"]` names."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from segkn.data.ade20k import LABEL_IDS as ADE20K_LABEL_IDS
from segkn.data.ade20k import ADE20KDataset
from segkn.data.base import SegmentationDataset, Transform
from segkn.data.cityscapes import LABEL_IDS as CITYSCAPES_LABEL_IDS
from segkn.data.cityscapes import CityscapesDataset
from segkn.data.errors import DatasetError
from segkn.data.folder import FolderDataset
from segkn.data.shapes import ShapesDataset
from segkn.data.voc import VOCDataset

__all__ = ["DATASETS", "build_dataset", "data_settings", "dataset_label_ids"]

logger = logging.getLogger(__name__)


def _root(cfg: Mapping[str, Any]) -> Any:
    if not cfg.get("root"):
        raise DatasetError(
            f"data.root is required for data.type {cfg['type']!r}: the folder holding the dataset"
        )
    return cfg["root"]


def _shapes(cfg: Mapping[str, Any], split: str, transform: Transform | None) -> ShapesDataset:
    length = cfg.get("length")
    if isinstance(length, Mapping):
        if split not in length:
            raise DatasetError(f"data.length has no entry for split {split!r} (has: {', '.join(length)})")
        length = length[split]
    given = {key: cfg[key] for key in ("size", "num_classes", "seed") if cfg.get(key) is not None}
    return ShapesDataset(split, length=length, transform=transform, **given)  # the rest: its defaults


# type -> builder(data_cfg, split, transform); the keys each builder reads are listed beside it.
DATASETS: dict[str, Callable[[Mapping[str, Any], str, Transform | None], SegmentationDataset]] = {
    # root
    "cityscapes": lambda cfg, split, tf: CityscapesDataset(_root(cfg), split, transform=tf),
    # root (VOC2012, VOCdevkit or their parent); split may be trainaug
    "voc": lambda cfg, split, tf: VOCDataset(_root(cfg), split, transform=tf),
    # root (ADEChallengeData2016 or its parent); split: training/validation (or train/val)
    "ade20k": lambda cfg, split, tf: ADE20KDataset(_root(cfg), split, transform=tf),
    # root, classes_file, splits (bool, default true: images/<split>/; false: images/ for every split)
    "folder": lambda cfg, split, tf: FolderDataset(
        _root(cfg), split if cfg.get("splits", True) else None, cfg.get("classes_file"), transform=tf
    ),
    # size, length (int or {split: int}), num_classes, seed
    "shapes": _shapes,
}


def data_settings(data: Any) -> dict[str, Any]:
    """The mapping that ``build_dataset`` and ``build_transform`` read, from a run config's ``data`` part.

    The one route from config names to data names (e.g. ``shapes_size`` -> ``size``), taken by
    training, evaluation and the Segmenter alike.
    """
    return {
        "type": data.type,
        "root": data.root,
        "classes_file": data.classes_file,
        "size": list(data.shapes_size),
        "length": {data.train_split: data.shapes_train_length, data.val_split: data.shapes_val_length},
        "num_classes": data.shapes_num_classes,
        "crop_size": list(data.crop_size),
        "scale_range": list(data.scale_range),
        "cat_max_ratio": data.cat_max_ratio,
        "hflip": 0.5 if data.hflip else 0.0,
        "photometric": data.photometric,
        "normalize": data.normalize or "none",
        "eval_resize": data.eval_resize,
        "eval_keep_ratio": data.eval_keep_ratio,
    }


def build_dataset(
    data_cfg: Mapping[str, Any], split: str, transform: Transform | None = None
) -> SegmentationDataset:
    """Build the dataset ``data_cfg['type']`` for ``split`` (e.g. train, val, test, trainaug)."""
    kind = data_cfg.get("type")
    if not isinstance(kind, str) or kind not in DATASETS:
        raise DatasetError(
            f"data.type: unknown dataset type {kind!r}; choose one of: {', '.join(sorted(DATASETS))}"
        )
    dataset = DATASETS[kind](data_cfg, split, transform)
    logger.info("%s split %r: %d samples, %d classes", kind, split, len(dataset), dataset.num_classes)
    return dataset


# type -> the dataset's own label id of each class index, for datasets whose stored ids differ.
_LABEL_IDS: dict[str, tuple[int, ...]] = {"cityscapes": CITYSCAPES_LABEL_IDS, "ade20k": ADE20K_LABEL_IDS}


def dataset_label_ids(data_type: str) -> list[int] | None:
    """The dataset's own label id of each train id (Cityscapes labelIds, ADE20K's 1..150), or None where
    they coincide."""
    ids = _LABEL_IDS.get(data_type)
    return None if ids is None else list(ids)
