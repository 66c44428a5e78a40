"""With norm kn no layer couples the samples of a batch: batch 1 trains, a sample's logits do not
depend on its batch neighbours, and gradient accumulation is exact."""

import pytest
import torch
import torch.nn.functional as F

from segkn.models import build_model
from segkn.models.prediction import predict_logits
from segkn.nn.blocks import batch_dependent_layers

ARCHS = ("deeplabv3", "deeplabv3plus", "unet")
ENCODERS = ("knresnet18", "resnet18")
CASES = [(a, e) for a in ARCHS for e in ENCODERS]
NUM_CLASSES = 4


def _model(arch, encoder, dropout=0.0, norm="kn", dtype=torch.float32):
    torch.manual_seed(0)
    cfg = {
        "arch": arch,
        "encoder": encoder,
        "norm": norm,
        "num_classes": NUM_CLASSES,
        "dropout_p": dropout,
        "decoder_dropout": dropout,
        "decoder_channels": [64, 32, 16, 16, 8] if arch == "unet" else 64,
    }
    return build_model(cfg).to(dtype)


def _batch(dtype=torch.float32, size=(32, 48)):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, *size, generator=g).to(dtype)
    y = torch.randint(0, NUM_CLASSES, (4, *size), generator=g)
    return x, y


@pytest.mark.parametrize("arch,encoder", CASES)
def test_no_batch_dependent_layer(arch, encoder):
    assert batch_dependent_layers(_model(arch, encoder)) == []


@pytest.mark.parametrize("arch,encoder", CASES)
def test_training_step_at_batch_size_1(arch, encoder):
    model = _model(arch, encoder, dropout=0.05).train()
    x, y = _batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x[:1]), y[:1])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert changed == len(before)


@pytest.mark.parametrize("mode", ["eval", "train-without-dropout"])
@pytest.mark.parametrize("arch,encoder", CASES)
def test_logits_do_not_depend_on_the_batch(arch, encoder, mode):
    model = _model(arch, encoder, dropout=0.05 if mode == "eval" else 0.0)
    model.train(mode != "eval")
    x, _ = _batch()
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    assert (together - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,encoder", CASES)
def test_gradient_accumulation_is_exact(arch, encoder):
    model = _model(arch, encoder, dtype=torch.float64).train()
    x, y = _batch(torch.float64)
    F.cross_entropy(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i in range(4):
        (F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) / 4).backward()
    for (name, p), g in zip(model.named_parameters(), full, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-7, atol=1e-10), name


def test_the_check_catches_batchnorm():
    """The same check on a BN model fails: the property is KN's, not the test's."""
    model = _model("deeplabv3plus", "resnet18", norm="bn").train()
    assert batch_dependent_layers(model)
    x, _ = _batch()
    with torch.no_grad():
        together = model(x)
        pairs = torch.cat([model(x[0:2]), model(x[2:4])])
    assert (together - pairs).abs().max().item() > 1e-3


def _alone_and_in_batch(model, mode):
    """Logits of one image predicted alone and with three other images in the batch, as users call it."""
    x, _ = _batch()
    with torch.no_grad():
        alone = predict_logits(model, x[:1], mode, crop_size=(32, 32), stride=(16, 16))
        in_batch = predict_logits(model, x, mode, crop_size=(32, 32), stride=(16, 16))[:1]
    return alone, in_batch


@pytest.mark.parametrize("mode", ["whole", "slide"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch,encoder", [("unet", "knresnet18"), ("deeplabv3plus", "resnet18")])
def test_kn_prediction_of_an_image_is_the_same_alone_and_in_a_batch(arch, encoder, training, mode):
    """A KN model gives an image the same logits whatever else is in its batch, in eval and in train
    mode (KN's statistics dropout is off here: it is random per sample, not a batch coupling)."""
    model = _model(arch, encoder, norm="kn").train(training)
    alone, in_batch = _alone_and_in_batch(model, mode)
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,encoder", [("unet", "resnet18")])
def test_bn_prediction_in_train_mode_depends_on_the_batch(arch, encoder):
    """The same BN model in train mode (batch statistics, as it trains) predicts the image differently
    alone and in a batch; in eval mode (running statistics) it does not."""
    model = _model(arch, encoder, norm="bn").train()
    alone, in_batch = _alone_and_in_batch(model, "whole")
    assert (alone - in_batch).abs().max().item() > 1e-2
    assert not torch.equal(alone.argmax(1), in_batch.argmax(1))
    model.eval()
    alone, in_batch = _alone_and_in_batch(model, "whole")
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_bn_deeplab_cannot_take_a_single_image_in_train_mode(arch):
    """DeepLab's image-pooling branch normalizes one value per channel: BN in train mode cannot take a
    batch of one image at all (so BN DeepLab cannot train at batch 1); the KN model can."""
    x, _ = _batch()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        _model(arch, "resnet18", norm="bn").train()(x[:1])
    assert torch.isfinite(_model(arch, "resnet18", norm="kn").train()(x[:1])).all()
