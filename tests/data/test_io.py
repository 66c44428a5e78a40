from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segkn.data import DatasetError, read_image, read_mask
from tests.data.builders import write_palette_png


def test_read_image_gives_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
    np.testing.assert_array_equal(image, rgb)


def test_read_image_grey_rgba_and_16_bit(tmp_path: Path) -> None:
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))

    bgra = np.zeros((4, 5, 4), dtype=np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 7  # red, nearly transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (4, 5, 3)
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()

    deep = np.full((4, 5, 3), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image[1, 1, 0] == 255 and image[0, 0, 0] == 0


def test_read_mask_palette_png_gives_indices(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    write_palette_png(tmp_path / "m.png", labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels)


def test_read_mask_grey_and_16_bit(tmp_path: Path) -> None:
    labels = np.array([[0, 3], [255, 9]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), labels)
    cv2.imwrite(str(tmp_path / "deep.png"), labels.astype(np.uint16) * 2)
    np.testing.assert_array_equal(read_mask(tmp_path / "deep.png"), labels.astype(np.int64) * 2)


def test_read_mask_rejects_colour_masks(tmp_path: Path) -> None:
    colour = np.zeros((3, 3, 3), dtype=np.uint8)
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DatasetError, match="colour.png"):
        read_mask(tmp_path / "colour.png")


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, reader) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match="broken.png"):
        reader(tmp_path / "broken.png")
    with pytest.raises(DatasetError, match="absent.png"):
        reader(tmp_path / "absent.png")


def test_same_size_runs_groups_consecutive_items_of_one_size() -> None:
    from segkn.data.io import same_size_runs

    sizes = [(2, 3), (2, 3), (2, 3), (4, 4), (2, 3), (2, 3)]
    runs = list(same_size_runs(iter(range(len(sizes))), sizes.__getitem__, limit=2))
    assert runs == [[0, 1], [2], [3], [4, 5]]
    assert list(same_size_runs(range(6), sizes.__getitem__)) == [[0, 1, 2], [3], [4, 5]]
    assert list(same_size_runs([], sizes.__getitem__)) == []
