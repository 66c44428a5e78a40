from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segkn.data import CityscapesDataset, build_transform, label_ids_to_train_ids, train_ids_to_label_ids
from tests.data.builders import make_cityscapes_tree, write_label_png

# label id -> train id for the ids the builder writes (official Cityscapes table).
EXPECTED = {0: 255, 3: 255, 7: 0, 8: 1, 9: 255, 26: 13, 30: 255, 33: 18}


def _label_ids_file(dataset: CityscapesDataset, index: int) -> Path:
    image = dataset.samples[index].image
    return (
        dataset.root / "gtFine" / dataset.split / image.parent.name
        / image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    )  # fmt: skip


def test_lists_both_cities_with_names(cityscapes_root: Path) -> None:
    dataset = CityscapesDataset(cityscapes_root, "train")
    assert len(dataset) == 4
    assert {s.image.parent.name for s in dataset.samples} == {"aachen", "bochum"}
    assert dataset.name(0) == "aachen_000000_000019"
    assert len(dataset.classes) == len(dataset.palette) == 19
    assert dataset.classes[13] == "car" and dataset.palette[0] == (128, 64, 128)


def test_label_ids_are_mapped_to_train_ids(cityscapes_root: Path) -> None:
    dataset = CityscapesDataset(cityscapes_root, "val")
    for index in range(len(dataset)):
        image, mask = dataset[index]
        label_ids = np.asarray(Image.open(_label_ids_file(dataset, index)))
        assert image.shape == (32, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (32, 64) and mask.dtype == np.int64
        expected = np.vectorize(EXPECTED.get)(label_ids)
        np.testing.assert_array_equal(mask, expected)
        assert set(np.unique(mask)) == {0, 1, 13, 18, 255}


def test_label_train_ids_file_is_preferred(tmp_path: Path) -> None:
    root = make_cityscapes_tree(tmp_path, splits=("train",), train_ids=True)
    dataset = CityscapesDataset(root, "train")
    assert all(s.mask.name.endswith("_gtFine_labelTrainIds.png") for s in dataset.samples)
    write_label_png(dataset.samples[0].mask, np.full((32, 64), 5))
    assert (dataset[0][1] == 5).all()
    label_ids = np.asarray(Image.open(_label_ids_file(dataset, 1)))
    np.testing.assert_array_equal(dataset[1][1], np.vectorize(EXPECTED.get)(label_ids))


def test_test_split_without_labels_gives_ignore_masks(cityscapes_root: Path) -> None:
    assert not (cityscapes_root / "gtFine" / "test").exists()
    dataset = CityscapesDataset(cityscapes_root, "test")
    image, mask = dataset[0]
    assert len(dataset) == 4 and dataset.samples[0].mask is None
    assert mask.shape == image.shape[:2] and (mask == 255).all() and mask.dtype == np.int64


def test_id_tables_round_trip() -> None:
    table = CityscapesDataset.train_id_to_label_id
    assert table.tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    np.testing.assert_array_equal(label_ids_to_train_ids(table), np.arange(19))
    np.testing.assert_array_equal(train_ids_to_label_ids(np.arange(19)), table)
    assert label_ids_to_train_ids(np.array([-1, 0, 6, 34, 255])).tolist() == [255] * 5
    assert train_ids_to_label_ids(np.array([255])).tolist() == [0]


def test_with_train_transform(cityscapes_root: Path) -> None:
    transform = build_transform({"crop_size": [16, 24]}, train=True)
    image, mask = CityscapesDataset(cityscapes_root, "train", transform=transform)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 24)
    assert mask.dtype == torch.int64 and mask.shape == (16, 24)
    assert set(mask.unique().tolist()) <= {0, 1, 13, 18, 255}


def test_train_ids_to_other_label_ids() -> None:
    mapped = train_ids_to_label_ids(np.array([[0, 2], [255, 1]]), label_ids=[300, 5, 9])
    assert mapped.tolist() == [[300, 9], [0, 5]] and mapped.dtype == np.int64
