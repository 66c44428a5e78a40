"""Fixtures: tiny datasets written to tmp_path in the real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.builders import make_ade20k_tree, make_cityscapes_tree, make_folder_tree, make_voc_tree


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    return make_cityscapes_tree(tmp_path / "cityscapes", splits=("train", "val", "test"))


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """The VOC2012 folder (inside ``tmp_path/voc/VOCdevkit``)."""
    return make_voc_tree(tmp_path / "voc")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder_tree(tmp_path / "folder")


@pytest.fixture
def ade20k_root(tmp_path: Path) -> Path:
    """The ADEChallengeData2016 folder (inside ``tmp_path/ade``)."""
    return make_ade20k_tree(tmp_path / "ade")
