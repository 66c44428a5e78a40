import numpy as np
import pytest

from segkn.inference.visualize import colorize, overlay, palette_table

PALETTE = [[10, 20, 30], [200, 100, 0]]


def test_colorize_paints_the_palette_and_ignore_black():
    labels = np.array([[0, 1], [255, 1]])
    out = colorize(labels, PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [200, 100, 0] == out[1, 1].tolist()
    assert out[1, 0].tolist() == [0, 0, 0]


def test_labels_beyond_the_palette_get_distinct_colours():
    table = palette_table(PALETTE, 40)
    colours = {tuple(c) for c in table[:40]}
    assert len(colours) == 40
    assert colorize(np.array([[39]]), PALETTE)[0, 0].tolist() == table[39].tolist()


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
