"""Standard-layout ResNet encoders with a norm word: smp contract, dilation, KN conversion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from segkn.models.resnet import ResNetEncoder
from segkn.nn.blocks import NORMS
from segkn.nn.knconv import KNConv2d

NAMES = ("resnet18", "resnet34", "resnet50")
CHANNELS = {
    "resnet18": [3, 64, 64, 128, 256, 512],
    "resnet34": [3, 64, 64, 128, 256, 512],
    "resnet50": [3, 64, 256, 512, 1024, 2048],
}


def feature_sizes(h: int, w: int, output_stride: int = 32) -> list[tuple[int, int]]:
    strides = [min(2**i, output_stride) for i in range(6)]
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


def run(encoder: nn.Module, h: int, w: int, batch: int = 1) -> list[torch.Tensor]:
    encoder.eval()
    with torch.no_grad():
        return encoder(torch.randn(batch, encoder._in_channels, h, w))


def conv_shapes(model: nn.Module) -> dict[str, tuple]:
    return {
        name: (tuple(m.weight.shape), m.stride, m.padding, m.dilation)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes(name: str, norm: str) -> None:
    encoder = ResNetEncoder(name, norm=norm)
    assert encoder.out_channels == CHANNELS[name]
    assert encoder.output_stride == 32
    sizes = [(64, 64)] if name == "resnet50" else [(64, 64), (97, 131)]
    for h, w in sizes:
        features = run(encoder, h, w)
        assert [f.shape[1] for f in features] == CHANNELS[name]
        assert [tuple(f.shape[-2:]) for f in features] == feature_sizes(h, w)
        assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("norm", ["kn", "bn"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_output_stride(norm: str, output_stride: int) -> None:
    plain = ResNetEncoder("resnet18", norm=norm)
    dilated = ResNetEncoder("resnet18", norm=norm, output_stride=output_stride)
    assert dilated.output_stride == output_stride
    assert dilated.state_dict().keys() == plain.state_dict().keys()
    # same weights: the dilated encoder loads the plain one's state_dict
    dilated.load_state_dict(plain.state_dict())
    features = run(dilated, 97, 131)
    assert [tuple(f.shape[-2:]) for f in features] == feature_sizes(97, 131, output_stride)
    rate = 32 // output_stride
    last = dict(dilated.named_modules())["layer4.1.conv2"]
    assert last.stride == (1, 1)
    assert last.dilation == (rate, rate)
    assert last.padding == (rate, rate)


def test_make_dilated_after_build_records_output_stride() -> None:
    encoder = ResNetEncoder("resnet18", norm="kn")
    encoder.make_dilated(16)
    assert encoder.output_stride == 16
    assert [tuple(f.shape[-2:]) for f in run(encoder, 64, 64)] == feature_sizes(64, 64, 16)


def test_kn_matches_bn_layout() -> None:
    kn = ResNetEncoder("resnet50", norm="kn", dropout_p=0.1)
    bn = ResNetEncoder("resnet50", norm="bn")
    assert not [m for m in kn.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))]
    assert conv_shapes(kn) == conv_shapes(bn)
    kn_convs = [m for m in kn.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(m, KNConv2d) and m.bias is not None for m in kn_convs)
    assert {m.dropout_p for m in kn_convs} == {0.1}


def batch_dependence(encoder: nn.Module, x: torch.Tensor) -> float:
    """Largest change of a sample's features (every stride) between the batch of 4 and two batches of 2."""
    with torch.no_grad():
        together = encoder(x)
        pairs = [torch.cat(f) for f in zip(encoder(x[:2]), encoder(x[2:]), strict=True)]
    return max((a - b).abs().max().item() for a, b in zip(together, pairs, strict=True))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_kn_is_batch_independent(mode: str) -> None:
    encoder = ResNetEncoder("resnet18", norm="kn", dropout_p=0.0).train(mode == "train")
    x = torch.randn(4, 3, 64, 64)
    assert batch_dependence(encoder, x) <= 1e-4
    with torch.no_grad():
        together = encoder(x)[-1]
        alone = encoder(x[1:2])[-1]
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-4)


def test_the_batch_independence_check_catches_batchnorm() -> None:
    """The same check fails on the BN encoder in training: the property is KN's, not the check's."""
    encoder = ResNetEncoder("resnet18", norm="bn").train()
    assert batch_dependence(encoder, torch.randn(4, 3, 64, 64)) > 1e-3


@pytest.mark.parametrize("norm", ["gn", "ln", "none"])
def test_baseline_norm_layers(norm: str) -> None:
    encoder = ResNetEncoder("resnet18", norm=norm)
    norms = [m for m in encoder.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    if norm == "none":
        assert norms == []
        assert all(m.bias is not None for m in encoder.modules() if isinstance(m, nn.Conv2d))
    else:
        groups = {m.num_groups for m in norms}
        assert groups == ({32} if norm == "gn" else {1})


def test_bn_keys_are_torchvision_keys() -> None:
    reference = resnet18()
    encoder = ResNetEncoder("resnet18", norm="bn")
    expected = {k for k in reference.state_dict() if not k.startswith("fc.")}
    assert set(encoder.state_dict()) == expected
    encoder.load_state_dict(reference.state_dict())  # strict; fc.* is dropped
    torch.testing.assert_close(encoder.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("norm", ["kn", "bn"])
def test_in_channels_and_depth(norm: str) -> None:
    encoder = ResNetEncoder("resnet18", norm=norm, in_channels=1, depth=3)
    assert encoder.out_channels == [1, 64, 64, 128]
    assert encoder.output_stride == 8
    features = run(encoder, 45, 37, batch=2)
    assert [f.shape[1] for f in features] == [1, 64, 64, 128]
    assert [tuple(f.shape[-2:]) for f in features] == feature_sizes(45, 37)[:4]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resnet101"):
        ResNetEncoder("resnet101")
    with pytest.raises(ValueError, match="norm"):
        ResNetEncoder("resnet18", norm="batch")
    with pytest.raises(ValueError, match="output_stride"):
        ResNetEncoder("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="depth"):
        ResNetEncoder("resnet18", depth=6)


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_every_trainable_parameter_of_a_shallow_encoder_gets_a_gradient(depth: int) -> None:
    # DistributedDataParallel waits for the gradient of every parameter that requires one
    encoder = ResNetEncoder("resnet18", norm="bn", depth=depth)
    sum(f.sum() for f in encoder(torch.randn(2, 3, 32, 32))[1:]).backward()
    trainable = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    assert {n for n, p in trainable.items() if p.grad is None} == set()
    assert any(n.startswith(f"layer{depth - 1}.") for n in trainable) or depth == 1
    assert set(encoder.state_dict()) == set(ResNetEncoder("resnet18", norm="bn").state_dict())
