"""With norm kn no layer couples the samples of a batch: batch 1 trains, a sample's logits do not
depend on its batch neighbours, and gradient accumulation is exact."""

import pytest
import torch
import torch.nn.functional as F

from segkn.models import build_model
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
