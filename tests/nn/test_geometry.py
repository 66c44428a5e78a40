import pytest

from segkn.nn import KN_DROPOUT_P, KernelNorm2d, KernelNorm2d1x1, KNConv2d, KNConv2d1x1
from segkn.nn.blocks import ConvNormAct, conv_norm
from segkn.nn.geometry import to_pad4, to_pair


@pytest.mark.parametrize(
    "padding,expected",
    [(2, (2, 2, 2, 2)), ((1, 3), (3, 3, 1, 1)), ((1, 0, 2, 3), (1, 0, 2, 3))],
)
def test_padding_forms(padding, expected):
    assert to_pad4(padding) == expected


def test_bad_padding_is_refused():
    with pytest.raises(ValueError, match="padding"):
        to_pad4((1, 2, 3))


@pytest.mark.parametrize("value,expected", [(3, (3, 3)), ((2, 5), (2, 5)), ([4, 1], (4, 1))])
def test_pairs(value, expected):
    assert to_pair(value, "size") == expected


@pytest.mark.parametrize("value", [(1, 2, 3), "ab", True, None, 2.5])
def test_bad_pairs_name_the_value(value):
    with pytest.raises(ValueError, match="crop_size must be an int or a pair"):
        to_pair(value, "crop_size")


def test_positive_pairs():
    assert to_pair((1, 1), "size", positive=True) == (1, 1)
    with pytest.raises(ValueError, match=r"size: expected positive \(height, width\), got \(0, 4\)"):
        to_pair((0, 4), "size", positive=True)


def test_every_kn_layer_has_one_dropout_default():
    """The paper's KNResNets use 0.05; every KN layer and block defaults to that one constant."""
    assert KN_DROPOUT_P == 0.05
    layers = [KernelNorm2d(), KernelNorm2d1x1(), KNConv2d(2, 2, 2), KNConv2d1x1(2, 2)]
    layers += [conv_norm(2, 2, 3, padding=1), ConvNormAct(2, 2).conv]
    assert {layer.dropout_p for layer in layers} == {KN_DROPOUT_P}
