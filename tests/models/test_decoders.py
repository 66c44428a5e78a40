"""DeepLabV3 / DeepLabV3+ / U-Net on a ResNet-18 encoder, for every norm word."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkn.models.decoders import DeepLabV3, DeepLabV3Plus, UNet
from segkn.models.decoders.deeplabv3.decoder import ASPP, default_atrous_rates
from segkn.models.decoders.unet.decoder import UNetDecoder
from segkn.models.resnet import ResNetEncoder
from segkn.nn.blocks import NORMS, batch_dependent_layers

ARCHS = {"deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus, "unet": UNet}
SMALL = {
    "deeplabv3": {"decoder_channels": 64},
    "deeplabv3plus": {"decoder_channels": 64},
    "unet": {"decoder_channels": (64, 32, 16, 16, 8)},
}


def build(arch: str, norm: str, output_stride: int = 32, **kwargs) -> nn.Module:
    encoder = ResNetEncoder("resnet18", norm=norm, output_stride=output_stride)
    return ARCHS[arch](encoder, num_classes=3, norm=norm, **{**SMALL[arch], **kwargs})


def first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_have_input_size_and_backward(arch: str, norm: str) -> None:
    model = build(arch, norm).train()
    batch = 2 if norm == "bn" else 1  # BatchNorm needs two values per channel on the 1x1 pooled map
    with torch.no_grad():
        assert model(torch.randn(batch, 3, 64, 64)).shape == (batch, 3, 64, 64)
    logits = model(torch.randn(batch, 3, 65, 97))
    assert logits.shape == (batch, 3, 65, 97)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (norm == "bn")
    if norm == "kn":
        assert batch_dependent_layers(model) == []


def no_dropout(arch: str, norm: str) -> nn.Module:
    """``build`` without KN statistics dropout or decoder dropout: training mode is deterministic."""
    encoder = ResNetEncoder("resnet18", norm=norm, dropout_p=0.0)
    extra = {} if arch == "unet" else {"decoder_dropout": 0.0}
    return ARCHS[arch](encoder, num_classes=3, norm=norm, dropout_p=0.0, **SMALL[arch], **extra)


def batch_dependence(model: nn.Module, x: torch.Tensor) -> float:
    """Largest change of a sample's logits between the batch of 4 and two batches of 2."""
    with torch.no_grad():
        together = model(x)
        pairs = torch.cat([model(x[:2]), model(x[2:])])
    return (together - pairs).abs().max().item()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("arch", ARCHS)
def test_kn_model_is_batch_independent(arch: str, mode: str) -> None:
    model = no_dropout(arch, "kn").train(mode == "train")
    x = torch.randn(4, 3, 64, 64)
    assert batch_dependence(model, x) <= 1e-4
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_batch_independence_check_catches_batchnorm(arch: str) -> None:
    """The same check fails on the BN model in training: the property is KN's, not the check's."""
    model = no_dropout(arch, "bn").train()
    assert batch_dependence(model, torch.randn(4, 3, 64, 64)) > 1e-3


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_kn_aspp_pooling_on_1x1_feature(arch: str) -> None:
    model = build(arch, "kn").train()  # batch 1 in training: no BatchNorm to object
    logits = model(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 3, 32, 32)
    logits.mean().backward()
    aspp = model.decoder.aspp
    pooled = aspp.branches[-1](torch.randn(1, 512, 1, 1))
    assert pooled.shape == (1, 64, 1, 1)


@pytest.mark.parametrize(
    ("arch", "output_stride", "rates"),
    [
        ("deeplabv3", 8, (12, 24, 36)),
        ("deeplabv3", 16, (6, 12, 18)),
        ("deeplabv3plus", 16, (6, 12, 18)),
        ("deeplabv3plus", 32, (3, 6, 9)),
    ],
)
def test_default_atrous_rates(arch: str, output_stride: int, rates: tuple[int, ...]) -> None:
    model = build(arch, "kn", output_stride=output_stride)
    dilated = model.decoder.aspp.branches[1:-1]
    assert tuple(first_conv(b).dilation[0] for b in dilated) == rates
    assert tuple(first_conv(b).padding[0] for b in dilated) == rates
    assert default_atrous_rates(output_stride) == rates


def test_explicit_atrous_rates() -> None:
    model = build("deeplabv3", "bn", atrous_rates=(2, 4))
    dilated = model.decoder.aspp.branches[1:-1]
    assert [first_conv(b).dilation for b in dilated] == [(2, 2), (4, 4)]


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_dilated_encoder(arch: str) -> None:
    model = build(arch, "kn", output_stride=16).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 3, 65, 97)


def test_unet_decoder_channels() -> None:
    encoder = ResNetEncoder("resnet18", norm="gn", depth=3)
    model = UNet(encoder, num_classes=2, norm="gn")
    assert [block.conv2.conv[0].out_channels for block in model.decoder.blocks] == [256, 128, 64]
    assert model.size_divisor == 8
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 30, 41)).shape == (1, 2, 30, 41)
    with pytest.raises(ValueError, match="decoder_channels"):
        UNetDecoder([3, 64, 64, 128, 256, 512], decoder_channels=(64, 32))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["kn", "bn"])
def test_aspp_onnx_dynamic_size(norm: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    aspp = ASPP(16, 8, (1, 2, 3), norm=norm).eval()
    path = tmp_path / "aspp.onnx"
    h, w = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
    torch.onnx.export(
        aspp, (torch.randn(1, 16, 5, 7),), str(path), dynamo=True, dynamic_shapes=({2: h, 3: w},)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(1, 1), (4, 9)]:
        x = torch.randn(1, 16, *size)
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), aspp(x), rtol=1e-4, atol=1e-4)
