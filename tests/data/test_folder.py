from pathlib import Path

import numpy as np
import pytest
import yaml

from segkn.data import DatasetError, FolderDataset, default_palette
from tests.data.builders import make_folder_tree


def test_splits_classes_and_default_palette(folder_root: Path) -> None:
    train, val = FolderDataset(folder_root, "train"), FolderDataset(folder_root, "val")
    assert len(train) == len(val) == 3
    assert train.name(0) == "train_000" and val.name(2) == "val_002"
    assert train.classes == ("background", "cat", "dog")
    assert train.palette == default_palette(3)
    image, mask = train[0]
    assert image.shape == (20, 28, 3) and image.dtype == np.uint8
    assert mask.shape == (20, 28) and mask.dtype == np.int64
    assert set(np.unique(mask)) <= {0, 1, 2, 255}


def test_flat_layout_jpeg_images_and_palette(tmp_path: Path) -> None:
    root = make_folder_tree(
        tmp_path, splits=None, classes=("sea", "land"), palette=[[0, 0, 255], [0, 255, 0]], image_ext=".jpg"
    )
    dataset = FolderDataset(root)
    assert len(dataset) == 3 and dataset.samples[0].image.suffix == ".jpg"
    assert dataset.palette == ((0, 0, 255), (0, 255, 0))
    assert dataset[1][0].shape == (20, 28, 3)


def test_classes_are_per_instance(tmp_path: Path) -> None:
    a = FolderDataset(make_folder_tree(tmp_path / "a", classes=("x", "y")), "train")
    b = FolderDataset(make_folder_tree(tmp_path / "b", classes=("p", "q", "r", "s")), "train")
    assert a.classes == ("x", "y") and b.classes == ("p", "q", "r", "s")
    assert a.num_classes == 2 and b.num_classes == 4
    assert FolderDataset.classes == ()


def test_custom_classes_file(folder_root: Path) -> None:
    (folder_root / "meta").mkdir()
    (folder_root / "meta" / "labels.yaml").write_text("classes: [bg, cat, dog, bird]\n")
    assert FolderDataset(folder_root, "train", classes_file="meta/labels.yaml").num_classes == 4


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("classes: [a, b\n", ["not valid YAML"]),
        ("- a\n- b\n", ["mapping", "classes"]),
        ("names: [a, b]\n", ["unknown key", "names"]),
        ("palette: [[0, 0, 0]]\n", ["classes"]),
        ("classes: []\n", ["classes", "non-empty"]),
        ("classes: [a, 3]\n", ["classes", "strings"]),
        ("classes: [a, a]\n", ["classes", "repeats"]),
        ("classes: [a, b]\npalette: [[0, 0, 0]]\n", ["palette", "2"]),
        ("classes: [a, b]\npalette: [[0, 0, 0], [0, 0, 300]]\n", ["palette", "entry 1"]),
        ("classes: [a, b]\npalette: [[0, 0, 0], red]\n", ["palette", "entry 1"]),
    ],
)
def test_bad_classes_file_names_the_file_and_key(folder_root: Path, content: str, words: list[str]) -> None:
    (folder_root / "classes.yaml").write_text(content)
    with pytest.raises(DatasetError) as info:
        FolderDataset(folder_root, "train")
    message = str(info.value)
    assert "classes.yaml" in message
    for word in words:
        assert word in message


def test_missing_classes_file(folder_root: Path) -> None:
    (folder_root / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match="classes.yaml"):
        FolderDataset(folder_root, "train")


def test_duplicate_stems_are_rejected(folder_root: Path) -> None:
    (folder_root / "images" / "train" / "train_000.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="train_000"):
        FolderDataset(folder_root, "train")


def test_too_many_classes(folder_root: Path) -> None:
    (folder_root / "classes.yaml").write_text(yaml.safe_dump({"classes": [f"c{i}" for i in range(256)]}))
    with pytest.raises(DatasetError, match="at most 255"):
        FolderDataset(folder_root, "train")
