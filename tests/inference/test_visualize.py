import numpy as np
import pytest

from segkn.data import palette
from segkn.inference.visualize import colorize, overlay, palette_table

PALETTE = [[10, 20, 30], [200, 100, 0]]


def test_the_colouring_is_segkn_data_palette():
    assert colorize is palette.colorize and palette_table is palette.palette_table


def test_overlay_blends_and_keeps_ignored_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    labels = np.zeros((4, 5), dtype=np.int64)
    labels[0, 0] = 255
    np.testing.assert_array_equal(overlay(image, labels, PALETTE, alpha=0.0), image)
    full = overlay(image, labels, PALETTE, alpha=1.0)
    assert full[1, 1].tolist() == PALETTE[0]
    assert full[0, 0].tolist() == image[0, 0].tolist()
    half = overlay(image, labels, PALETTE, alpha=0.5)
    expected = np.rint(0.5 * image[2, 3].astype(float) + 0.5 * np.array(PALETTE[0]))
    assert half[2, 3].tolist() == expected.astype(int).tolist()


def test_overlay_rejects_mismatched_sizes_and_bad_alpha():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="same size"):
        overlay(image, np.zeros((5, 4), dtype=np.int64), PALETTE)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((4, 5), dtype=np.int64), PALETTE, alpha=1.5)
