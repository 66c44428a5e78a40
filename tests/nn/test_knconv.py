import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkn.nn import KernelNorm2d, KernelNorm2d1x1, KNConv2d, KNConv2d1x1
from segkn.nn.functional import dropout_mask
from tests.nn.reference import knconv_reference

KERNELS = (1, 2, 3, 7)
STRIDES = (1, 2)
PADDINGS = ("none", "symmetric", "asymmetric")
BATCHES = (1, 4)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _padding(kind: str, k: int) -> int | tuple[int, int, int, int]:
    if kind == "none":
        return 0
    if kind == "symmetric":
        return k // 2 if k > 1 else 1
    return (1, 0, 2, 1) if k > 1 else (0, 1, 1, 0)


def _input(batch: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # an offset mean and uneven scales, as activations deep in a residual stream have
    return (torch.randn(batch, 6, 15, 18, generator=g, dtype=torch.float64) * 2.5 + 1.5).to(dtype)


def _layer(k, s, pad, dilation, dtype) -> KNConv2d:
    torch.manual_seed(1)
    layer = KNConv2d(6, 5, k, stride=s, padding=pad, dilation=dilation, dropout_p=0.05).to(dtype).eval()
    nn.init.normal_(layer.bias)
    return layer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k,s,pad_kind,batch", list(itertools.product(KERNELS, STRIDES, PADDINGS, BATCHES)))
def test_knconv_equals_kernelnorm_then_conv(k, s, pad_kind, batch, dtype):
    layer = _layer(k, s, _padding(pad_kind, k), 1, dtype)
    x = _input(batch, dtype)
    units = KernelNorm2d(k, s, layer.pad4, dropout_p=0.05).eval()(x)
    expected = F.conv2d(units, layer.weight, layer.bias, stride=k)
    out = layer(x)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "k,s,pad_kind,dilation,batch", list(itertools.product(KERNELS, STRIDES, PADDINGS, (1, 2), BATCHES))
)
def test_knconv_matches_unfold_reference_with_dilation(k, s, pad_kind, dilation, batch, dtype):
    layer = _layer(k, s, _padding(pad_kind, k), dilation, dtype)
    x = _input(batch, dtype, seed=2)
    expected = knconv_reference(x, layer.weight, layer.bias, layer.stride, layer.pad4, layer.dilation)
    out = layer(x)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= TOL[dtype]


def test_grouped_knconv_normalizes_over_all_channels():
    layer = KNConv2d(6, 4, 3, padding=1, groups=2).double().eval()
    x = _input(2, torch.float64)
    units = KernelNorm2d(3, 1, 1).eval()(x)
    expected = F.conv2d(units, layer.weight, layer.bias, stride=3, groups=2)
    assert torch.allclose(layer(x), expected, atol=1e-10)


def test_statistics_come_from_a_dropout_copy_in_training():
    layer = KNConv2d(6, 5, 3, padding=(1, 2, 0, 1), dropout_p=0.3).double().train()
    x = _input(2, torch.float64)
    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)
    keep = ~dropout_mask(x, 0.3)  # the same draw as inside the layer
    dropped = F.pad(x * keep / 0.7, layer.pad4)
    expected = knconv_reference(
        x, layer.weight, layer.bias, layer.stride, layer.pad4, layer.dilation, stats_input=dropped
    )
    assert torch.allclose(out, expected, atol=1e-10)
    assert not torch.allclose(out, layer.eval()(x), atol=1e-3)


def test_dropout_only_in_training():
    layer = KNConv2d(6, 5, 2, padding=1, dropout_p=0.2)
    x = _input(2, torch.float32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    layer.dropout_p = 0.0
    assert torch.allclose(layer(x), layer.eval()(x))


def test_units_of_zeros_give_exactly_the_bias():
    """After a ReLU whole units are often zero: they normalize to zeros, so the output is the bias."""
    layer = KNConv2d(3, 4, 3, padding=1).eval()
    x = torch.relu(torch.randn(1, 3, 8, 8))
    x[..., :4, :] = 0.0
    out = layer(x)
    assert torch.equal(out[..., :2, :], layer.bias.view(1, -1, 1, 1).expand(1, 4, 2, 8))


def test_constant_input_gives_bias_without_nan():
    layer = KNConv2d(3, 4, 3, padding=0).eval()
    out = layer(torch.full((1, 3, 8, 8), 7.0))
    assert torch.isfinite(out).all()
    # (conv - mu * sum(W)) cancels to rounding noise, scaled by 1 / sqrt(eps)
    assert torch.allclose(out, layer.bias.view(1, -1, 1, 1).expand_as(out), atol=1e-3)


def test_float32_stays_accurate_for_large_offsets():
    layer = KNConv2d(6, 5, 3, padding=1).eval()
    x = torch.randn(2, 6, 12, 12) * 0.5 + 20.0
    expected = knconv_reference(
        x.double(), layer.weight.double(), layer.bias.double(), (1, 1), layer.pad4, (1, 1)
    )
    out = layer(x)
    assert (out.double() - expected).abs().max().item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_statistics_in_float32(dtype):
    layer = KNConv2d(8, 8, 2, padding=(1, 0, 1, 0)).eval()
    x = torch.relu(torch.randn(2, 8, 16, 16) * 3 + 1)  # as after a ReLU
    expected = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    rel = (out.float() - expected).norm() / expected.norm()
    assert rel < 2e-2


def test_knconv_is_a_drop_in_conv2d():
    layer = KNConv2d(4, 8, 3, stride=2, padding=(1, 2), dilation=1, groups=2, bias=False)
    assert isinstance(layer, nn.Conv2d)
    assert layer.padding == (1, 2) and layer.pad4 == (2, 2, 1, 1)
    assert layer.bias is None and layer.weight.shape == (8, 2, 3, 3)
    layer.padding = (0, 1, 2, 3)
    assert layer.padding == (0, 1, 2, 3)
    assert "dropout_p=0.05" in repr(layer)
    out = layer(torch.randn(1, 4, 9, 9))
    assert out.shape == (1, 8, (9 + 5 - 3) // 2 + 1, (9 + 1 - 3) // 2 + 1)


def test_knconv_gradients_are_correct():
    layer = KNConv2d(3, 2, 2, padding=(1, 0, 1, 0), dilation=1).double().eval()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_1x1_fast_paths_match_the_general_layers():
    x = _input(3, torch.float64)
    torch.manual_seed(0)
    fast = KNConv2d1x1(6, 4).double().eval()
    general = KNConv2d(6, 4, 1).double().eval()
    general.load_state_dict(fast.state_dict())
    assert torch.allclose(fast(x), general(x), atol=1e-10)
    assert torch.allclose(KernelNorm2d1x1().eval()(x), KernelNorm2d(1).eval()(x), atol=1e-10)
    strided = KNConv2d1x1(6, 4, stride=2).double().eval()
    strided.load_state_dict(fast.state_dict())
    general2 = KNConv2d(6, 4, 1, stride=2).double().eval()
    general2.load_state_dict(fast.state_dict())
    assert torch.allclose(strided(x), general2(x), atol=1e-10)
