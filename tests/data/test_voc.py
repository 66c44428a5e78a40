from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkn.data import DatasetError, VOCDataset
from tests.data.builders import make_voc_tree, write_palette_png


def test_accepts_voc2012_its_parent_and_grandparent(voc_root: Path) -> None:
    for root in (voc_root, voc_root.parent, voc_root.parent.parent):
        dataset = VOCDataset(root, "train")
        assert dataset.root == voc_root and len(dataset) == 3
    assert VOCDataset(voc_root, "val").name(0) == "2007_000033"


def test_classes_and_palette() -> None:
    assert len(VOCDataset.classes) == len(VOCDataset.palette) == 21
    assert VOCDataset.classes[15] == "person"
    assert VOCDataset.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert VOCDataset.palette[15] == (192, 128, 128) and VOCDataset.palette[20] == (0, 64, 128)


def test_palette_masks_give_indices_and_keep_the_ignore_border(voc_root: Path) -> None:
    dataset = VOCDataset(voc_root, "train")
    labels = np.full((24, 32), 255, dtype=np.uint8)
    labels[2:-2, 2:-2] = np.arange(20 * 28).reshape(20, 28) % 21
    write_palette_png(dataset.samples[1].mask, labels)
    assert Image.open(dataset.samples[1].mask).mode == "P"
    image, mask = dataset[1]
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels)
    for index in range(len(dataset)):
        mask = dataset[index][1]
        assert (mask[:2] == 255).all() and (mask[:, -2:] == 255).all()
        assert mask[2:-2, 2:-2].max() <= 20


def test_trainaug_uses_the_augmented_grey_masks(tmp_path: Path) -> None:
    aug_ids = ["2007_000032", "2008_000002", "2010_000003"]
    voc = make_voc_tree(tmp_path, aug_ids=aug_ids)
    dataset = VOCDataset(voc, "trainaug")
    assert [dataset.name(i) for i in range(len(dataset))] == aug_ids
    assert all(s.mask.parent.name == "SegmentationClassAug" for s in dataset.samples)
    assert Image.open(dataset.samples[0].mask).mode == "L"
    mask = dataset[2][1]
    assert mask.shape == (24, 32) and mask.max() <= 20


def test_trainaug_missing_says_what_is_missing(voc_root: Path) -> None:
    with pytest.raises(DatasetError, match="SegmentationClassAug"):
        VOCDataset(voc_root, "trainaug")


def test_deeplab_style_list_lines(voc_root: Path) -> None:
    (voc_root / "ImageSets" / "Segmentation" / "pairs.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClass/2007_000032.png\n"
    )
    assert VOCDataset(voc_root, "pairs").name(0) == "2007_000032"
