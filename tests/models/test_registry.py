"""The registry of architectures and encoders: names, defaults and rules, read by build_model."""

import pytest

from segkn.models import factory, registry
from segkn.models.knresnet import SPECS
from segkn.models.resnet import RESNET_SPECS
from segkn.nn.blocks import NORMS


def test_factory_names_come_from_the_registry():
    assert factory.ARCHS == tuple(registry.ARCH_SPECS) == ("deeplabv3", "deeplabv3plus", "unet")
    assert factory.ENCODERS == (*SPECS, *RESNET_SPECS)


@pytest.mark.parametrize(
    ("encoder", "norm"), [("knresnet18", "kn"), ("knresnet50", "kn"), ("resnet34", "bn")]
)
def test_default_norm(encoder, norm):
    assert registry.default_norm(encoder) == norm


def test_unknown_names_get_valid_choices_and_a_hint():
    with pytest.raises(ValueError, match=r"model\.encoder: unknown 'resnet19' \(did you mean 'resnet18'\?\)"):
        registry.default_norm("resnet19")
    with pytest.raises(ValueError, match="valid choices: deeplabv3, deeplabv3plus, unet"):
        registry.arch_spec("pspnet")


def test_knresnet_needs_norm_kn_and_resnet_takes_every_norm():
    for norm in NORMS:
        registry.check_encoder_norm("resnet50", norm)
    registry.check_encoder_norm("knresnet34", "kn")
    with pytest.raises(ValueError, match=r"model\.norm: knresnet34 is kernel normalized by design.*resnet18"):
        registry.check_encoder_norm("knresnet34", "gn")


def test_default_decoder_channels_are_cut_to_the_depth():
    assert registry.arch_spec("unet").default_decoder_channels(3) == [256, 128, 64]
    assert registry.arch_spec("unet").default_decoder_channels(5) == [256, 128, 64, 32, 16]
    assert registry.arch_spec("deeplabv3plus").default_decoder_channels(4) == 256


def test_resolved_decoder_channels():
    cfg = factory.resolve_model_config({"arch": "unet", "encoder_depth": 3, "num_classes": 2})
    assert cfg["decoder_channels"] == [256, 128, 64]
    with pytest.raises(ValueError, match="model.decoder_channels: deeplabv3 takes one integer"):
        factory.resolve_model_config({"arch": "deeplabv3", "decoder_channels": [8, 8], "num_classes": 2})
    with pytest.raises(ValueError, match="decoder_channels: unet takes a list, one value per encoder stage"):
        factory.resolve_model_config({"arch": "unet", "decoder_channels": 8, "num_classes": 2})
    with pytest.raises(ValueError, match=r"unet needs one value per encoder stage \(5\)"):
        factory.resolve_model_config({"arch": "unet", "decoder_channels": [8, 8], "num_classes": 2})


@pytest.mark.parametrize("depth", [0, 6, "5"])
def test_encoder_depth_out_of_range(depth):
    with pytest.raises(ValueError, match=r"model\.encoder_depth: expected 1\.\.5"):
        registry.check_encoder_depth("unet", depth)
