from pathlib import Path

import torch

from segkn.data import (
    ADE20KDataset,
    CityscapesDataset,
    FolderDataset,
    SegmentationDataset,
    ShapesDataset,
    VOCDataset,
    build_dataset,
    build_transform,
)
from tests.data.builders import make_folder_tree


def test_builds_each_type(
    cityscapes_root: Path, voc_root: Path, folder_root: Path, ade20k_root: Path
) -> None:
    cases = [
        ({"type": "ade20k", "root": str(ade20k_root.parent)}, ADE20KDataset, 3),
        ({"type": "cityscapes", "root": str(cityscapes_root)}, CityscapesDataset, 4),
        ({"type": "voc", "root": str(voc_root.parent.parent)}, VOCDataset, 3),
        ({"type": "folder", "root": str(folder_root)}, FolderDataset, 3),
        ({"type": "shapes", "length": {"train": 6, "val": 2}, "size": [64, 96]}, ShapesDataset, 6),
    ]
    for cfg, cls, length in cases:
        dataset = build_dataset(cfg, "train")
        assert isinstance(dataset, cls) and isinstance(dataset, SegmentationDataset)
        assert len(dataset) == length
        assert len(dataset.classes) == len(dataset.palette) == dataset.num_classes
    assert build_dataset({"type": "shapes", "length": 5, "size": 64}, "val")[0][0].shape == (64, 64, 3)


def test_folder_without_split_folders(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path, splits=None)
    dataset = build_dataset({"type": "folder", "root": root, "splits": False}, "val")
    assert len(dataset) == 3 and dataset.split is None


def test_transform_is_applied(voc_root: Path) -> None:
    transform = build_transform({"crop_size": 16}, train=True)
    image, mask = build_dataset({"type": "voc", "root": voc_root}, "val", transform=transform)[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.int64


def test_shapes_defaults_come_from_the_dataset() -> None:
    dataset = build_dataset({"type": "shapes"}, "train")
    assert len(dataset) == len(ShapesDataset("train")) == 2000 and dataset.size == (128, 128)
    assert len(build_dataset({"type": "shapes", "length": None}, "val")) == 200


def test_data_settings_route_config_names_to_data_names() -> None:
    from segkn.config import Config
    from segkn.data import data_settings

    data = Config().data
    data.shapes_size, data.shapes_val_length, data.hflip = [64, 96], 3, False
    settings = data_settings(data)
    assert settings["size"] == [64, 96] and settings["hflip"] == 0.0 and settings["normalize"] == "none"
    dataset = build_dataset(settings, "val", build_transform(settings, train=False))
    assert len(dataset) == 3 and dataset[0][0].shape == (3, 64, 96)
