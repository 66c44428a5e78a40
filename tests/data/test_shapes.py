import numpy as np
import pytest

from segkn.data import DatasetError, ShapesDataset


def test_samples_are_arrays_of_the_contract() -> None:
    dataset = ShapesDataset("train", length=4)
    image, mask = dataset[3]
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert mask.shape == (128, 128) and mask.dtype == np.int64
    assert dataset.classes == ("background", "circle", "rectangle", "triangle", "ring")
    assert len(dataset.palette) == 5 and len(dataset) == 4 and dataset.name(3) == "train_000003"
    with pytest.raises(IndexError):
        dataset[4]


def test_deterministic_per_split_and_index() -> None:
    a, b = ShapesDataset("train", length=5), ShapesDataset("train", length=50)
    for index in (0, 4):
        np.testing.assert_array_equal(a[index][0], b[index][0])
        np.testing.assert_array_equal(a[index][1], b[index][1])
    assert not np.array_equal(a[0][0], a[1][0])
    val = ShapesDataset("val", length=5)
    assert not np.array_equal(a[0][1], val[0][1])
    reseeded = ShapesDataset("train", length=5, seed=1)
    assert not np.array_equal(a[0][1], reseeded[0][1])


def test_every_class_appears_and_background_dominates_less_than_all() -> None:
    dataset = ShapesDataset("val", length=12)
    counts = sum(np.bincount(dataset[i][1].ravel(), minlength=5) for i in range(len(dataset)))
    assert len(counts) == 5 and (counts > 0).all()
    assert 0.3 < counts[0] / counts.sum() < 0.95


@pytest.mark.parametrize("num_classes", [2, 7])
def test_num_classes_and_size(num_classes: int) -> None:
    dataset = ShapesDataset("train", size=(96, 160), length=8, num_classes=num_classes)
    assert len(dataset.classes) == len(dataset.palette) == num_classes
    masks = np.stack([dataset[i][1] for i in range(8)])
    assert masks.shape == (8, 96, 160) and masks.max() < num_classes and masks.min() >= 0


def test_colour_does_not_give_the_class_away() -> None:
    """The mean colour of one class varies a lot between samples: only the outline tells the class."""
    dataset = ShapesDataset("train", length=30)
    means = []
    for index in range(len(dataset)):
        image, mask = dataset[index]
        if (mask == 1).sum() > 50:
            means.append(image[mask == 1].mean(axis=0))
    assert len(means) > 5 and np.std(np.stack(means), axis=0).min() > 30


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"num_classes": 8}, {"size": 16}, {"length": 0}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DatasetError, match="shapes"):
        ShapesDataset("train", **kwargs)


def test_write_shapes_folder_is_a_folder_dataset(tmp_path):
    from segkn.data.folder import FolderDataset
    from segkn.data.shapes import write_shapes_folder

    images = write_shapes_folder(tmp_path / "demo", split="test", count=3, size=(40, 48), num_classes=4)
    assert [p.name for p in images] == [f"shapes_test_000{i}.png" for i in range(3)]
    folder = FolderDataset(tmp_path / "demo", split="test")
    generated = ShapesDataset("test", (40, 48), 3, num_classes=4)
    assert folder.classes == generated.classes and folder.palette == generated.palette
    for i in range(3):
        image, mask = folder[i]
        expected_image, expected_mask = generated[i]
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask)
