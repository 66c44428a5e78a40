import json
import math
import os
import pickle
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

import segkn  # noqa: F401  (registers the KNResNet encoders in smp)
from segkn.models.knresnet import KNResNet, KNResNetEncoder
from segkn.models.weights import WeightsError, load_official_weights
from segkn.nn import KNConv2d, KNConv2d1x1

NAMES = ("knresnet18", "knresnet34", "knresnet50")
CLASSIFIER_PARAMS = {"knresnet18": 11_685_220, "knresnet34": 21_792_830, "knresnet50": 25_556_390}
ENCODER_CHANNELS = {
    "knresnet18": [3, 64, 64, 256, 512, 512],
    "knresnet34": [3, 64, 64, 256, 512, 512],
    "knresnet50": [3, 256, 256, 512, 810, 2048],
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_classifier_has_the_papers_parameter_count(name):
    assert n_params(KNResNet(name, num_classes=1000)) == CLASSIFIER_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_encoder_uses_every_backbone_parameter(name):
    classifier, encoder = KNResNet(name), KNResNetEncoder(name)
    fc = sum(p.numel() for n, p in classifier.named_parameters() if n.startswith("fc."))
    assert n_params(encoder) == CLASSIFIER_PARAMS[name] - fc
    backbone_keys = {k for k in classifier.state_dict() if not k.startswith("fc.")}
    assert set(encoder.state_dict()) == backbone_keys
    assert encoder.out_channels == ENCODER_CHANNELS[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(224, 224), (512, 1024), (513, 769), (97, 131)])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_feature_sizes_for_any_input(name, size, output_stride):
    with torch.device("meta"):  # shapes only: full-size CPU runs would take minutes
        encoder = KNResNetEncoder(name, output_stride=output_stride)
        features = encoder(torch.empty(1, 3, *size))
    assert len(features) == 6
    for i, (feature, channels) in enumerate(zip(features, ENCODER_CHANNELS[name], strict=True)):
        stride = min(2**i, output_stride)
        assert tuple(feature.shape) == (1, channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_feature_sizes_computed_on_cpu():
    encoder = KNResNetEncoder("knresnet18").eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 97, 131))
    assert [tuple(f.shape[-2:]) for f in features] == [
        (97, 131),
        (49, 66),
        (25, 33),
        (13, 17),
        (7, 9),
        (4, 5),
    ]
    assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_keeps_weights_and_keys(output_stride):
    torch.manual_seed(0)
    plain = KNResNetEncoder("knresnet18").eval()
    dilated = KNResNetEncoder("knresnet18", output_stride=output_stride).eval()
    dilated.load_state_dict(plain.state_dict())
    assert list(plain.state_dict()) == list(dilated.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = plain(x), dilated(x)
    undilated_stages = 3 if output_stride == 16 else 2  # strides 4 (, 8) are untouched
    for i in range(1, 2 + undilated_stages):
        assert torch.allclose(a[i], b[i], atol=1e-6)
    assert b[-1].shape[-2:] == (64 // output_stride, 96 // output_stride)
    convs = [m for m in dilated.modules() if isinstance(m, KNConv2d) and m.kernel_size != (1, 1)]
    assert max(m.dilation[0] for m in convs) == 32 // output_stride
    dilated.make_dilated(32)  # undo
    with torch.no_grad():
        assert torch.allclose(dilated(x)[-1], a[-1], atol=1e-6)


def test_encoder_matches_classifier_blocks():
    """The encoder runs the classifier's blocks with the same weights, up to stride 16."""
    torch.manual_seed(0)
    classifier = KNResNet("knresnet18").eval()
    encoder = KNResNetEncoder("knresnet18").eval()
    encoder.load_state_dict(classifier.state_dict())  # the classifier's fc is left out
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = encoder(x)
        y = classifier.block0(x)
        y = classifier.run_blocks(classifier.stage_blocks[0], y)
        assert torch.allclose(features[2], y, atol=1e-6)
        y = classifier.run_blocks(classifier.stage_blocks[1], y)
        y = classifier.run_blocks(classifier.stage_blocks[2], y)
        assert torch.allclose(features[4], y, atol=1e-6)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels(in_channels):
    encoder = KNResNetEncoder("knresnet18", in_channels=in_channels, depth=3).eval()
    features = encoder(torch.randn(1, in_channels, 32, 32))
    assert features[0].shape[1] == in_channels and encoder.out_channels[0] == in_channels
    assert features[-1].shape == (1, 256, 4, 4)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_shallow_encoders_build_only_what_they_use(depth):
    encoder = KNResNetEncoder("knresnet18", depth=depth)
    features = encoder(torch.randn(1, 3, 32, 32))
    assert len(features) == depth + 1 == len(encoder.out_channels)
    assert n_params(encoder) < n_params(KNResNetEncoder("knresnet18", depth=depth + 1))


def _official_checkpoint(name: str, path, drop=None, add=None, transform=None):
    """Write a checkpoint in the official key layout: {"model": state_dict}, 1x1 convs as .conv1x1."""
    torch.manual_seed(3)
    classifier = KNResNet(name)
    one_by_one = {n for n, m in classifier.named_modules() if isinstance(m, KNConv2d1x1)}
    state = {}
    for key, value in classifier.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state[f"{module}.conv1x1.{leaf}" if module in one_by_one else key] = value.clone()
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(1)
    if transform:
        state = transform(state)
    torch.save({"model": state, "epoch": 90}, path)
    return classifier, state


@pytest.mark.parametrize("name", NAMES)
def test_official_checkpoint_loads_into_the_encoder(name, tmp_path):
    path = tmp_path / f"{name}_imagenet.pth"
    classifier, state = _official_checkpoint(name, path)
    if name == "knresnet50":
        assert any(".conv1x1." in k for k in state)  # the layout really differs from segkn's
    encoder = KNResNetEncoder(name)
    left_out = load_official_weights(encoder, path)
    assert left_out == ["fc.bias", "fc.weight"]
    theirs = classifier.state_dict()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    # and the classifier itself loads every key
    fresh = KNResNet(name)
    assert load_official_weights(fresh, path) == []


def test_official_checkpoint_with_module_prefix_and_other_in_channels(tmp_path):
    path = tmp_path / "ddp.pth"
    _official_checkpoint("knresnet18", path, transform=lambda s: {f"module.{k}": v for k, v in s.items()})
    encoder = KNResNetEncoder("knresnet18", in_channels=1)
    load_official_weights(encoder, path, in_channels=1)
    assert encoder.block0[0].weight.shape[1] == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"drop": "res_block2.conv1.weight"}, "not in the file"),
        ({"add": "res_block99.conv1.weight"}, "does not have"),
        ({"add": "head.weight"}, "does not have"),
    ],
)
def test_official_checkpoint_mismatch_fails_loudly(tmp_path, kwargs, match):
    path = tmp_path / "bad.pth"
    _official_checkpoint("knresnet18", path, **kwargs)
    with pytest.raises(WeightsError, match=match):
        load_official_weights(KNResNetEncoder("knresnet18"), path)


def test_wrong_depth_checkpoint_fails(tmp_path):
    path = tmp_path / "knresnet18_imagenet.pth"
    _official_checkpoint("knresnet18", path)
    with pytest.raises(WeightsError, match="bad.pth|not in the file|shape"):
        load_official_weights(KNResNetEncoder("knresnet34"), path)


def test_missing_and_unsafe_weight_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_official_weights(KNResNetEncoder("knresnet18"), tmp_path / "nope.pth")
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(WeightsError, match="never executed"):
        load_official_weights(KNResNetEncoder("knresnet18"), evil)
    assert not marker.exists()


def test_shallow_encoder_takes_its_part_of_the_checkpoint(tmp_path):
    path = tmp_path / "knresnet18_imagenet.pth"
    classifier, _ = _official_checkpoint("knresnet18", path)
    encoder = KNResNetEncoder("knresnet18", depth=3)
    left_out = load_official_weights(encoder, path)
    assert "trans_block3.conv.weight" in left_out
    assert torch.equal(encoder.trans_block1.conv.weight, classifier.trans_block1.conv.weight)


@pytest.mark.parametrize("arch", ["Unet", "DeepLabV3Plus", "FPN"])
def test_registered_in_smp(arch):
    model = getattr(smp, arch)(encoder_name="knresnet34", encoder_weights=None, classes=19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 19, 64, 64)


def test_smp_in_channels_and_output_stride():
    model = smp.DeepLabV3Plus(
        encoder_name="knresnet18", encoder_weights=None, classes=5, in_channels=4, encoder_output_stride=8
    ).eval()
    assert model.encoder.output_stride == 8
    with torch.no_grad():
        assert model(torch.randn(1, 4, 64, 64)).shape == (1, 5, 64, 64)


# ---- the paper's checkpoint layout, stated as data ---------------------------------------------------

# Key -> shape of knresnet{18,34,50}_imagenet.pth's {"model": state_dict}, as the paper's code
# (norm-torch, models/knresnet/knresnet.py) names and shapes its tensors; written down independently
# of segkn's modules.
OFFICIAL_LAYOUT = json.loads((Path(__file__).parent / "knresnet_official_layout.json").read_text())


def _layout_checkpoint(name: str, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A file with the official layout of ``name``, every tensor holding its own random values."""
    g = torch.Generator().manual_seed(5)
    state = {key: torch.randn(shape, generator=g) for key, shape in OFFICIAL_LAYOUT[name].items()}
    torch.save({"model": {prefix + k: v for k, v in state.items()}, "epoch": 90}, path)
    return state


def _segkn_key(official: str) -> str:
    """The README's mapping: a 1x1 KN conv's ``<name>.conv1x1.weight|bias`` is ``<name>.weight|bias``."""
    return official.replace(".conv1x1.", ".")


@pytest.mark.parametrize("name", NAMES)
def test_official_layout_has_the_papers_parameter_counts(name):
    assert sum(math.prod(shape) for shape in OFFICIAL_LAYOUT[name].values()) == CLASSIFIER_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_every_tensor_of_the_official_layout_loads(name, tmp_path):
    path = tmp_path / f"{name}_imagenet.pth"
    state = _layout_checkpoint(name, path, prefix="module." if name == "knresnet34" else "")
    classifier = KNResNet(name)
    assert load_official_weights(classifier, path) == []
    own = classifier.state_dict()
    assert set(own) == {_segkn_key(k) for k in state}
    for key, value in state.items():
        assert torch.equal(own[_segkn_key(key)], value), key
    encoder = KNResNetEncoder(name)
    assert load_official_weights(encoder, path) == ["fc.bias", "fc.weight"]
    own = encoder.state_dict()
    assert set(own) == {_segkn_key(k) for k in state if not k.startswith("fc.")}
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[_segkn_key(key)], value), key


@pytest.mark.parametrize("in_channels", [1, 2, 4, 5])
def test_adapted_stem_sums_or_cycles_and_rescales_the_rgb_filters(in_channels, tmp_path):
    path = tmp_path / "knresnet18_imagenet.pth"
    rgb = _layout_checkpoint("knresnet18", path)["block0.0.weight"]
    encoder = KNResNetEncoder("knresnet18", in_channels=in_channels, depth=1)
    load_official_weights(encoder, path, in_channels=in_channels)
    stem = encoder.block0[0].weight
    if in_channels == 1:
        expected = rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3]
    else:
        expected = torch.cat([rgb[:, c % 3 : c % 3 + 1] for c in range(in_channels)], 1) * 3 / in_channels
    torch.testing.assert_close(stem, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_channels", [1, 6])
def test_adapted_stem_sees_a_replicated_image_as_the_rgb_stem_does(in_channels, tmp_path):
    """A grey image to the 1-channel stem, or RGB twice over to the 6-channel one, gives the features
    that the original RGB stem gives for the image in RGB."""
    path = tmp_path / "knresnet18_imagenet.pth"
    _layout_checkpoint("knresnet18", path)
    rgb_encoder = KNResNetEncoder("knresnet18", depth=1).eval()
    load_official_weights(rgb_encoder, path)
    encoder = KNResNetEncoder("knresnet18", in_channels=in_channels, depth=1).eval()
    load_official_weights(encoder, path, in_channels=in_channels)
    image = torch.rand(1, 3, 20, 24)
    if in_channels == 1:
        image = image[:, :1].expand(1, 3, 20, 24)
    x = image[:, :1] if in_channels == 1 else torch.cat([image, image], 1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)[1], rgb_encoder(image)[1], rtol=1e-4, atol=1e-4)
