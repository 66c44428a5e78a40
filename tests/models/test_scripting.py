"""torch.jit.script compiles KN layers, the KNResNet encoders and KN models; they compute what eager does.

smp's encoder test-suite scripts every encoder (``_is_torch_scriptable``); TorchScript runs the KN
convolution as plain ops, so a scripted model gives the eager model's outputs up to float rounding.
"""

from __future__ import annotations

import pytest
import torch

from segkn.models import build_model
from segkn.models.knresnet import KNResNetEncoder
from segkn.nn import KernelNorm2d1x1, KNConv2d, KNConv2d1x1

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.mark.parametrize(
    "layer",
    [
        KNConv2d(3, 4, 2, padding=(1, 0, 1, 0)),
        KNConv2d(3, 4, 3, stride=2, padding=2, dilation=2, relu=True),
        KNConv2d1x1(3, 5, stride=2),
        KernelNorm2d1x1(),
    ],
    ids=["asymmetric", "dilated-relu", "1x1-strided", "kn-1x1"],
)
def test_scripted_layers_equal_eager(layer):
    layer = layer.double().eval()
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x), rtol=1e-10, atol=1e-10)


def test_scripted_layer_trains():
    torch.manual_seed(0)
    layer = KNConv2d(4, 6, 2, padding=(1, 0, 1, 0), relu=True, dropout_p=0.2).train()
    scripted = torch.jit.script(layer)
    scripted(torch.randn(2, 4, 8, 8)).square().mean().backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "output_stride", "depth"),
    [("knresnet18", 32, 5), ("knresnet34", 16, 5), ("knresnet50", 8, 4), ("knresnet18", 16, 2)],
)
def test_scripted_knresnet_encoder_equals_eager(name, output_stride, depth):
    torch.manual_seed(0)
    encoder = KNResNetEncoder(name, depth=depth, output_stride=output_stride).eval()
    assert encoder._is_torch_scriptable  # what smp's encoder tests look at
    scripted = torch.jit.script(encoder)
    x = torch.rand(1, 3, 45, 61)
    with torch.inference_mode():
        eager, compiled = encoder(x), scripted(x)
    assert len(compiled) == len(eager) == depth + 1
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("arch", "encoder"), [("deeplabv3plus", "knresnet18"), ("unet", "resnet18")])
def test_scripted_kn_model_equals_eager(arch, encoder):
    torch.manual_seed(0)
    model = build_model({"arch": arch, "encoder": encoder, "norm": "kn", "num_classes": 3}).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(1, 3, 45, 61)  # not a multiple of the stride: the model pads and crops
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)
