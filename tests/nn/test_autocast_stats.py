"""Under autocast a KN layer inside a network receives bfloat16 / float16 activations; its statistics are
computed in float32 all the same. What that buys, checked on the outputs against float64 references
computed from the same low-precision inputs:

- accuracy where a unit's mean is far from the sample's (a bright object on a dark background): in
  low precision the mean is rounded and E[x^2] - E[x]^2 cancels catastrophically, losing the variance;
- no overflow for float16 activations in the hundreds, whose squares pass float16's 65504.

The convolution weights are exact in the low precision and sum to zero per output channel, so that
the error left is the normalization's (and the output's rounding), not the low-precision convolution's.
"""

import pytest
import torch

from segkn.nn import KernelNorm2d1x1, KNConv2d, KNConv2d1x1
from tests.nn.reference import knconv_reference

LOW = [torch.bfloat16, torch.float16]
# Relative error bounds: a few roundings of the output (measured with float32 statistics: 2.4e-3 and
# 3e-4). Statistics in the input's precision miss them by far.
BOUND = {torch.bfloat16: 6e-3, torch.float16: 1e-3}
LAYERS = {
    "2x2": (lambda: KNConv2d(16, 8, 2, padding=(1, 0, 1, 0)), (1, 0, 1, 0)),
    "3x3": (lambda: KNConv2d(16, 8, 3, padding=1), (1, 1, 1, 1)),
    "1x1": (lambda: KNConv2d1x1(16, 8), (0, 0, 0, 0)),
}


def _offset_input(dtype: torch.dtype, offset: float = 20.0) -> torch.Tensor:
    """Unit-variance activations, ``offset`` higher on the left half of the image."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, 12, generator=g)
    x[..., :6] += offset
    return x.to(dtype)


def _relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.double() - expected).norm() / expected.norm()).item()


def _exact_zero_sum_(layer: torch.nn.Module) -> torch.nn.Module:
    """Weights in sixteenths up to +-0.5 that sum to zero per output channel, and a bias in sixteenths:
    exact in bfloat16 and float16, so the convolution loses nothing to the offset and what is left is
    the normalization's own error."""
    g = torch.Generator().manual_seed(1)
    w = layer.weight
    per_channel = w[0].numel()
    half = torch.randint(-8, 9, (w.shape[0], per_channel // 2), generator=g).float() / 16
    values = torch.cat([half, -half], dim=1)
    order = torch.stack([torch.randperm(per_channel, generator=g) for _ in range(w.shape[0])])
    with torch.no_grad():
        w.copy_(values.gather(1, order).view_as(w))
        layer.bias.copy_(torch.randint(-8, 9, layer.bias.shape, generator=g).float() / 16)
    return layer


def _knconv(name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output under autocast in x's dtype, and the float64 reference on the same values."""
    make, pad4 = LAYERS[name]
    layer = _exact_zero_sum_(make().eval())
    expected = knconv_reference(x.double(), layer.weight.double(), layer.bias.double(), (1, 1), pad4, (1, 1))
    with torch.autocast("cpu", dtype=x.dtype):
        out = layer(x)
    return out, expected


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", LAYERS)
def test_low_precision_input_with_offset_units(name, dtype):
    out, expected = _knconv(name, _offset_input(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _relative_error(out, expected) < BOUND[dtype]


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_kernel_norm_1x1_low_precision_input_with_offset_units(dtype):
    x = _offset_input(dtype)
    var, mean = torch.var_mean(x.double(), dim=1, keepdim=True, correction=0)
    expected = (x.double() - mean) / torch.sqrt(var + 1e-5)
    with torch.autocast("cpu", dtype=dtype):
        out = KernelNorm2d1x1().eval()(x)
    assert out.dtype == dtype
    assert _relative_error(out, expected) < BOUND[dtype]


@pytest.mark.parametrize("scale", [300.0, 1000.0])
def test_float16_activations_whose_squares_overflow_float16(scale):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 16, 12, 12, generator=g) * scale).half()
    assert torch.isinf(x.square()).any()  # squared in float16, they overflow
    out, expected = _knconv("2x2", x)
    assert torch.isfinite(out).all()
    assert _relative_error(out, expected) < BOUND[torch.float16]
