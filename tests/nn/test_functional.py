"""kn_conv2d's two paths: the eager autograd Function (lean backward) and the plain ops that
torch.compile / export / functorch trace. Both must compute the same function and gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from segkn.nn import KNConv2d, KNConv2d1x1
from segkn.nn.functional import KNGeometry, _kn_conv2d_ops, _KNConv2dFunction, dropout_mask, kn_conv2d
from tests.nn.reference import knconv_reference

# (kernel, stride, dilation, pad4): symmetric, asymmetric cropped, asymmetric the stride cannot crop
# (padded explicitly), dilated with padding-only windows, 1x1 strided
GEOMETRIES = [
    ((2, 2), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((2, 2), (1, 1), (1, 1), (1, 0, 1, 0)),
    ((3, 3), (2, 2), (1, 1), (0, 1, 2, 0)),
    ((3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),
    ((2, 2), (1, 1), (1, 1), (3, 3, 0, 0)),
    ((1, 1), (2, 2), (1, 1), (0, 0, 0, 0)),
    ((7, 7), (2, 2), (1, 1), (3, 3, 3, 3)),
]


def _case(geometry, groups=1, bias=True, size=(2, 4, 9, 11), seed=0):
    kernel, stride, dilation, pad4 = geometry
    geo = KNGeometry(kernel, stride, dilation, pad4, groups)
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    x = (torch.randn(*size, generator=g, dtype=dtype) * 2 + 1).relu_().requires_grad_()
    w = torch.randn(6, 4 // groups, *kernel, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return geo, x, w, b


@pytest.mark.parametrize(
    "geometry,groups,bias,relu",
    [(geo, 1, True, False) for geo in GEOMETRIES] + [(geo, 2, False, True) for geo in GEOMETRIES],
)
def test_function_gradients_are_exact(geometry, groups, bias, relu):
    geo, x, w, b = _case(geometry, groups, bias, size=(1, 4, 7, 8))
    inputs = (x, w, b) if bias else (x, w)

    def fn(*args):
        return _KNConv2dFunction.apply(args[0], args[1], args[2] if bias else None, geo, 0.0, 1e-5, relu)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-7)


@pytest.mark.parametrize("geometry,relu", list(itertools.product(GEOMETRIES, (False, True))))
def test_function_equals_plain_ops_with_dropout(geometry, relu):
    """Same seed, same dropout draw: outputs and all gradients agree to float64 rounding."""
    geo, x, w, b = _case(geometry, groups=2)
    torch.manual_seed(5)
    out1 = _KNConv2dFunction.apply(x, w, b, geo, 0.3, 1e-5, relu)
    torch.manual_seed(5)
    out2 = _kn_conv2d_ops(x, w, b, geo, 0.3, 1e-5, relu, inplace=False)
    grad = torch.randn_like(out1)
    grads1 = torch.autograd.grad(out1, (x, w, b), grad)
    grads2 = torch.autograd.grad(out2, (x, w, b), grad)
    assert (out1 - out2).abs().max() < 1e-10
    for g1, g2 in zip(grads1, grads2, strict=True):
        assert (g1 - g2).abs().max() < 1e-9


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_no_grad_inplace_path_matches_the_reference(geometry):
    geo, x, w, b = _case(geometry)
    with torch.no_grad():
        out = kn_conv2d(x, w, b, geo)
    expected = knconv_reference(x.detach(), w.detach(), b.detach(), geo.stride, geo.pad4, geo.dilation)
    assert out.shape == expected.shape and out.is_contiguous()
    assert (out - expected).abs().max() < 1e-10


def test_fused_relu_is_relu_of_the_output():
    torch.manual_seed(0)
    plain = KNConv2d(6, 5, 2, padding=(1, 0, 1, 0)).double()
    fused = KNConv2d(6, 5, 2, padding=(1, 0, 1, 0), relu=True).double()
    fused.load_state_dict(plain.state_dict())
    plain.eval(), fused.eval()
    x = torch.randn(2, 6, 8, 9, dtype=torch.float64, requires_grad=True)
    out = fused(x)
    assert torch.equal(out, torch.relu(plain(x)))
    assert "relu=True" in repr(fused)
    (g1,) = torch.autograd.grad(out.sum(), x)
    (g2,) = torch.autograd.grad(torch.relu(plain(x)).sum(), x)
    assert torch.allclose(g1, g2, atol=1e-10)


def _saved_bytes(fn, *args) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward in fn(*args), counting each storage once, parameters not."""
    storages: dict[int, int] = {}
    params = {a.untyped_storage().data_ptr() for a in args[1:] if isinstance(a, torch.Tensor)}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return sum(storages.values()), out


@pytest.mark.parametrize("relu", [False, True])
def test_training_keeps_input_output_mask_and_small_maps_only(relu):
    """The backward needs the input, the output, a one-byte dropout mask and per-position maps:
    nothing else the size of the input (no dropout copy, padded copy or normalized units)."""
    torch.manual_seed(0)
    layer = KNConv2d(32, 32, 2, padding=(1, 0, 1, 0), dropout_p=0.05, relu=True).train()
    x = torch.randn(2, 32, 24, 24).relu_().requires_grad_()
    saved, out = _saved_bytes(lambda x, w, b: layer(x), x, layer.weight, layer.bias)
    tensor_bytes = x.numel() * 4
    small_maps = 16 * 2 * 25 * 25 * 4  # a few (N, 1, H', W') maps
    assert saved <= tensor_bytes + out.numel() * 4 + x.numel() + small_maps
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_channels_last_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    layer = KNConv2d(8, 6, 3, padding=1, relu=True, dropout_p=0.0).double()
    x = torch.randn(2, 8, 10, 12, dtype=torch.float64).relu_()
    x1 = x.clone().requires_grad_()
    x2 = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    out1, out2 = layer(x1), layer.to(memory_format=torch.channels_last)(x2)
    assert torch.allclose(out1, out2, atol=1e-12)
    out1.square().sum().backward()
    out2.square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(layer.eval()(x2), layer(x1.detach()), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_backward(dtype):
    """Under autocast the Function convolves in low precision, keeps statistics in float32, and its
    gradients stay close to the float32 ones."""
    torch.manual_seed(0)
    layer = KNConv2d(16, 8, 2, padding=(1, 0, 1, 0), relu=True, dropout_p=0.0)
    x = torch.randn(2, 16, 12, 12).relu_().requires_grad_()
    out = layer(x)
    (g32, w32) = torch.autograd.grad(out.square().sum(), (x, layer.weight))
    with torch.autocast("cpu", dtype=dtype):
        low = layer(x)
    assert low.dtype == dtype
    (g16, w16) = torch.autograd.grad(low.float().square().sum(), (x, layer.weight))
    assert g16.dtype == torch.float32 and w16.dtype == torch.float32
    assert ((g16 - g32).norm() / g32.norm()).item() < 5e-2
    assert ((w16 - w32).norm() / w32.norm()).item() < 5e-2


def test_strided_1x1_reads_only_the_pixels_it_convolves():
    torch.manual_seed(0)
    layer = KNConv2d1x1(6, 4, stride=2).double().train()
    layer.dropout_p = 0.0
    x = torch.randn(1, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert torch.count_nonzero(x.grad[:, :, 1::2, :]) == 0
    assert torch.count_nonzero(x.grad[:, :, :, 1::2]) == 0


@pytest.mark.slow
def test_compiled_layer_has_no_graph_break_and_equals_eager():
    torch.manual_seed(0)
    layer = KNConv2d(8, 6, 2, padding=(1, 0, 1, 0), relu=True, dropout_p=0.0)
    x = torch.randn(2, 8, 16, 20).relu_().requires_grad_()
    compiled = torch.compile(layer, fullgraph=True)  # fullgraph: a graph break is an error
    out_c = compiled(x)
    out_e = layer(x)
    assert (out_c - out_e).abs().max() < 1e-5
    (grad_c,) = torch.autograd.grad(out_c.square().sum(), x)
    (grad_e,) = torch.autograd.grad(out_e.square().sum(), x)
    assert (grad_c - grad_e).abs().max() < 1e-5
    with torch.no_grad():
        assert (compiled.eval()(x) - F.relu(layer(x))).abs().max() < 1e-5


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_dropout_mask_drops_each_value_with_probability_p(p):
    torch.manual_seed(0)
    like = torch.empty(4, 64, 64, 65)  # an element count that is not a multiple of 4
    mask = dropout_mask(like, p)
    assert mask.shape == like.shape and mask.dtype == torch.bool
    n = mask.numel()
    assert abs(mask.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    # no pattern across channels or positions: the drop rates of halves agree too
    assert abs(mask[:, :32].float().mean().item() - mask[:, 32:].float().mean().item()) < 0.01
    torch.manual_seed(0)
    assert torch.equal(dropout_mask(like, p), mask)  # the global seed makes it reproducible
    assert not torch.equal(dropout_mask(like, p), mask)


@pytest.mark.slow
def test_compiled_layer_under_autocast_has_no_graph_break():
    torch.manual_seed(0)
    layer = KNConv2d(8, 6, 2, stride=2, relu=True).eval()
    x = torch.rand(1, 8, 16, 16)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_c, out_e = compiled(x), layer(x)
    assert out_c.dtype == out_e.dtype == torch.bfloat16
    assert (out_c.float() - out_e.float()).abs().max() < 2e-2
