import pytest
import torch

from segkn.models import build_model
from segkn.models.knresnet import KNResNet
from segkn.nn import KNConv2d


def test_logits_of_exactly_the_input_size():
    model = build_model({"arch": "deeplabv3plus", "encoder": "knresnet18", "num_classes": 19}).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 513, 769)).shape == (1, 19, 513, 769)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "unet"])
@pytest.mark.parametrize("size", [(97, 131), (64, 64)])
def test_every_arch_any_size(arch, size):
    model = build_model({"arch": arch, "encoder": "knresnet18", "encoder_depth": 4, "num_classes": 3}).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 3, *size)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"arch": "pspnet"}, "valid choices: deeplabv3, deeplabv3plus, unet"),
        ({"encoder": "knresnet101"}, "valid choices: knresnet18, knresnet34"),
        ({"norm": "batchnorm"}, "valid choices: kn, bn, gn, ln, none"),
        ({"decoder_norm": "instance"}, "valid choices: kn, bn, gn, ln, none"),
        ({"output_stride": 4}, "output_stride"),
        ({"num_classes": 0}, "num_classes"),
        ({"encoder_depth": 6}, "encoder_depth"),
        ({"norm": "bn"}, "kernel normalized by design"),
        ({"lr": 0.1}, "unknown key"),
    ],
)
def test_clear_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_model({"num_classes": 5, **cfg})


def test_decoder_norm_and_baseline_norms():
    model = build_model(
        {"arch": "deeplabv3", "encoder": "knresnet18", "decoder_norm": "gn", "num_classes": 2}
    )
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.decoder.modules())
    assert isinstance(model.encoder.block0[0], KNConv2d)
    for norm in ("bn", "gn", "ln", "none", "kn"):
        model = build_model({"arch": "unet", "encoder": "resnet18", "norm": norm, "num_classes": 2}).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 3, 33, 47)).shape == (1, 2, 33, 47)


def test_encoder_weights_from_an_official_checkpoint(tmp_path):
    torch.manual_seed(5)
    classifier = KNResNet("knresnet18")
    path = tmp_path / "knresnet18_imagenet.pth"
    torch.save({"model": classifier.state_dict()}, path)
    model = build_model({"encoder": "knresnet18", "num_classes": 3, "encoder_weights": str(path)})
    assert torch.equal(model.encoder.res_block3.conv1.weight, classifier.res_block3.conv1.weight)
    with pytest.raises(ValueError, match="not found"):
        build_model({"encoder": "knresnet18", "num_classes": 3, "encoder_weights": str(tmp_path / "x.pth")})


@pytest.mark.parametrize("encoder", ["knresnet18", "resnet18"])
@pytest.mark.parametrize("depth", [1, 2])
def test_shallow_unet_builds_and_keeps_the_input_size(encoder, depth):
    """encoder_depth 1 and 2 are accepted by the config: a U-Net is built and runs at any size."""
    model = build_model({"arch": "unet", "encoder": encoder, "encoder_depth": depth, "num_classes": 3}).eval()
    assert model.encoder.output_stride == 2**depth and model.size_divisor == 2**depth
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 50)).shape == (1, 3, 37, 50)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("depth", [1, 2])
def test_deeplab_refuses_a_shallow_encoder_in_validation(arch, depth):
    with pytest.raises(ValueError, match=rf"model\.encoder_depth: {arch} needs encoder_depth >= 3.*unet"):
        build_model({"arch": arch, "encoder_depth": depth, "num_classes": 3})


@pytest.mark.parametrize(("arch", "expected"), [("deeplabv3", 16), ("deeplabv3plus", 16), ("unet", 32)])
@pytest.mark.parametrize("given", [{}, {"output_stride": None}])
def test_output_stride_defaults_per_architecture(arch, expected, given):
    model = build_model({"arch": arch, "encoder_depth": 5, "num_classes": 2, **given})
    assert model.encoder.output_stride == expected
    assert model.config["output_stride"] == expected


def test_an_explicit_output_stride_is_kept():
    model = build_model({"arch": "unet", "output_stride": 16, "num_classes": 2})
    assert model.encoder.output_stride == 16 and model.config["output_stride"] == 16
