"""Each user-caused data problem stops with one DatasetError that names the file or folder."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from segkn.data import CityscapesDataset, DatasetError, FolderDataset, VOCDataset, build_dataset
from tests.data.builders import write_label_png, write_palette_png


@pytest.mark.parametrize("cls", [CityscapesDataset, VOCDataset, FolderDataset])
def test_missing_root(tmp_path: Path, cls) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        cls(tmp_path / "nowhere", "train")


def test_root_without_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="leftImg8bit"):
        CityscapesDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match="JPEGImages"):
        VOCDataset(tmp_path, "train")
    (tmp_path / "classes.yaml").write_text("classes: [a, b]\n")
    with pytest.raises(DatasetError, match="images"):
        FolderDataset(tmp_path, "train")


def test_missing_split(cityscapes_root: Path, voc_root: Path, folder_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"leftImg8bit/extra.*splits present: test, train, val"):
        CityscapesDataset(cityscapes_root, "extra")
    with pytest.raises(DatasetError, match=r"Segmentation/test\.txt.*splits present: train, val"):
        VOCDataset(voc_root, "test")
    with pytest.raises(DatasetError, match=r"images/test"):
        FolderDataset(folder_root, "test")


def test_missing_annotation_folder(cityscapes_root: Path) -> None:
    (cityscapes_root / "leftImg8bit" / "extra" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="gtFine/extra"):
        CityscapesDataset(cityscapes_root, "extra")


def test_image_without_mask(cityscapes_root: Path, voc_root: Path, folder_root: Path) -> None:
    label = next((cityscapes_root / "gtFine" / "train").glob("bochum/*_labelIds.png"))
    label.unlink()
    with pytest.raises(DatasetError, match=f"has no mask.*{label.name}"):
        CityscapesDataset(cityscapes_root, "train")

    (voc_root / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(DatasetError, match=r"2007_000039\.jpg has no mask"):
        VOCDataset(voc_root, "train")

    (folder_root / "masks" / "val" / "val_001.png").unlink()
    with pytest.raises(DatasetError, match=r"val_001\.png has no mask.*val_001\.png"):
        FolderDataset(folder_root, "val")


def test_listed_image_missing(voc_root: Path) -> None:
    (voc_root / "JPEGImages" / "2009_000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2009_000001\.jpg.*not found"):
        VOCDataset(voc_root, "val")


def test_empty_image_folder(cityscapes_root: Path, folder_root: Path) -> None:
    (cityscapes_root / "leftImg8bit" / "empty").mkdir()
    (cityscapes_root / "gtFine" / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .*leftImg8bit.png images"):
        CityscapesDataset(cityscapes_root, "empty")
    for image in (folder_root / "images" / "val").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="no images"):
        FolderDataset(folder_root, "val")


def test_mask_size_differs_from_image(folder_root: Path) -> None:
    dataset = FolderDataset(folder_root, "train")
    write_label_png(dataset.samples[1].mask, np.zeros((20, 27)))
    dataset[0]  # the others still load
    with pytest.raises(DatasetError, match=r"train_001\.png is 27x20.*train_001\.png is 28x20"):
        dataset[1]


def test_corrupt_image_and_mask(folder_root: Path, voc_root: Path) -> None:
    dataset = FolderDataset(folder_root, "train")
    dataset.samples[0].image.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"cannot read image .*images/train/train_000\.png"):
        dataset[0]
    dataset.samples[1].mask.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(DatasetError, match=r"cannot read mask .*masks/train/train_001\.png"):
        dataset[1]
    voc = VOCDataset(voc_root, "val")
    voc.samples[0].image.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DatasetError, match=r"2007_000033\.jpg"):
        voc[0]


def test_label_outside_the_classes(folder_root: Path, voc_root: Path) -> None:
    dataset = FolderDataset(folder_root, "train")
    labels = np.zeros((20, 28))
    labels[0, :3] = [3, 7, 255]
    write_label_png(dataset.samples[2].mask, labels)
    with pytest.raises(DatasetError, match=r"train_002\.png has label values 3, 7 outside the 3 classes"):
        dataset[2]

    voc = VOCDataset(voc_root, "train")
    write_palette_png(voc.samples[0].mask, np.full((24, 32), 21))
    with pytest.raises(DatasetError, match=r"2007_000032\.png has label values 21 "):
        voc[0]


def test_grey_image_is_not_an_error(folder_root: Path) -> None:
    dataset = FolderDataset(folder_root, "train")
    cv2.imwrite(str(dataset.samples[0].image), np.full((20, 28), 9, np.uint8))
    image = dataset[0][0]
    assert image.shape == (20, 28, 3) and (image == 9).all()


def test_bad_dataset_config() -> None:
    with pytest.raises(DatasetError, match="cityscapes, folder, shapes, voc"):
        build_dataset({"type": "coco", "root": "x"}, "train")
    with pytest.raises(DatasetError, match="data.root"):
        build_dataset({"type": "voc"}, "train")
    with pytest.raises(DatasetError, match="test"):
        build_dataset({"type": "shapes", "length": {"train": 4}}, "test")
