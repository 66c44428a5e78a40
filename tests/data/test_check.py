from pathlib import Path

import numpy as np
import pytest

from segkn.data import ADE20KDataset, CityscapesDataset, DatasetError, FolderDataset, ShapesDataset
from segkn.data.check import check_files
from tests.data.builders import write_label_png


def _reads_every_sample(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


def test_good_datasets_pass(folder_root: Path, cityscapes_root: Path, ade20k_root: Path) -> None:
    datasets = (
        FolderDataset(folder_root, "val"),
        CityscapesDataset(cityscapes_root, "val"),
        ADE20KDataset(ade20k_root, "val"),  # label 0 read as 255, 1..150 as 0..149
    )
    for dataset in datasets:
        check_files(dataset, progress=False)  # Cityscapes: labelIds mapped to train ids, the rest 255
        _reads_every_sample(dataset)
    check_files(ShapesDataset("val", size=32, length=3), progress=False)  # generated: no files


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            "label",
            r"mask \S+val_001\.png has label values 3, 9 outside the 3 classes \(0\.\.2, 255 = ignore\)",
        ),
        ("size", r"mask \S+val_001\.png is 10x20 \(WxH\) but its image \S+val_001\.png is 28x20"),
        ("image", r"cannot read image \S+val_001\.png: the file is corrupt or not an image"),
        ("mask", r"cannot read mask \S+val_001\.png"),
        ("missing image", r"image not found: \S+val_001\.png"),
        ("missing mask", r"mask not found: \S+val_001\.png"),
    ],
)
def test_a_bad_file_is_named_as_reading_it_would(folder_root: Path, damage: str, message: str) -> None:
    dataset = FolderDataset(folder_root, "val")
    image, mask = (
        folder_root / "images" / "val" / "val_001.png",
        folder_root / "masks" / "val" / "val_001.png",
    )
    if damage == "label":
        write_label_png(mask, np.tile(np.array([0, 3, 9, 255], dtype=np.uint8), (20, 7)))
    elif damage == "size":
        write_label_png(mask, np.zeros((20, 10), dtype=np.uint8))
    elif damage in ("image", "mask"):
        (image if damage == "image" else mask).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    else:
        (image if damage == "missing image" else mask).unlink()
    with pytest.raises(DatasetError, match=message):
        check_files(dataset, name="split 'val'", progress=False)
    with pytest.raises(DatasetError, match=message):  # what the run would have met later
        _reads_every_sample(dataset)


def test_the_first_problem_is_named_and_the_rest_counted(folder_root: Path) -> None:
    dataset = FolderDataset(folder_root, "val")
    for name in ("val_000", "val_002"):
        write_label_png(folder_root / "masks" / "val" / f"{name}.png", np.full((20, 28), 7, dtype=np.uint8))
    with pytest.raises(
        DatasetError, match=r"val_000\.png has label values 7 .*\(1 more file problem\(s\) in split 'v"
    ):
        check_files(dataset, name="split 'val'", progress=False)
    check_files(dataset, indices=[1], progress=False)  # a shard without them
