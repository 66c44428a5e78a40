import numpy as np

from segkn.data import ShapesDataset, VOCDataset
from segkn.data.cityscapes import CityscapesDataset
from segkn.data.palette import colorize, ignore_colour, palette_table

PALETTE = [[10, 20, 30], [200, 100, 0]]


def test_colorize_paints_the_palette_and_ignore_black():
    labels = np.array([[0, 1], [255, 1]])
    out = colorize(labels, PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [200, 100, 0] == out[1, 1].tolist()
    assert out[1, 0].tolist() == [0, 0, 0]


def test_ignore_is_grey_where_black_is_a_class_colour():
    assert ignore_colour(CityscapesDataset.palette) == (0, 0, 0)
    assert ignore_colour(ShapesDataset.palette) == (128, 128, 128)  # black background
    assert ignore_colour(VOCDataset.palette) == (64, 64, 64)  # black background, grey 128 is a class
    for palette in (ShapesDataset.palette, VOCDataset.palette):
        ignored = colorize(np.array([[255, 0]]), palette)
        assert ignored[0, 0].tolist() == list(ignore_colour(palette)) != ignored[0, 1].tolist()


def test_labels_beyond_the_palette_get_distinct_colours():
    table = palette_table(PALETTE, 40)
    colours = {tuple(c) for c in table[:40]}
    assert len(colours) == 40
    assert colorize(np.array([[39]]), PALETTE)[0, 0].tolist() == table[39].tolist()
