import pytest
import torch

from segkn.engine.acceleration import compile_enabled, compiled_graphs, to_channels_last
from segkn.engine.checkpoint import (
    checkpoint_payload,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from segkn.engine.trainer import train
from segkn.models import build_model

from ._configs import tiny_config

# dropout off and plain SGD, so that runs differ only by float rounding
EXACT = {
    "model": {"dropout_p": 0.0},
    "data": {"scale_range": [1.0, 1.0]},
    "train": {"optimizer": "sgd", "lr": 1e-3, "min_lr": 0.0},
}


def _weights(cfg):
    return load_checkpoint(cfg.run_path / "last.pth")["model"]


def _assert_close_weights(a, b, atol):
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=f"{key} differs")


def test_compile_auto_is_on_for_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not compile_enabled("auto", cpu) and compile_enabled("auto", cuda)
    assert compile_enabled(True, cpu) and not compile_enabled(False, cuda)


def test_checkpoints_keep_plain_keys_and_read_compiled_ones(tmp_path):
    cfg = tiny_config(tmp_path, model={"num_classes": 5})
    model = build_model(cfg.model.to_dict())
    wrapped = torch.compile(model)  # compiles lazily: nothing is compiled here
    assert all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    payload = checkpoint_payload(cfg, wrapped, ["c"] * 5, [[0, 0, 0]] * 5)
    assert list(payload["model"]) == list(model.state_dict())  # saved under the module's own names

    # a file that holds torch.compile's prefixed keys (written by other code) loads all the same
    save_checkpoint(tmp_path / "prefixed.pth", {**payload, "model": wrapped.state_dict()})
    assert list(load_checkpoint(tmp_path / "prefixed.pth")["model"]) == list(model.state_dict())
    rebuilt, _ = model_from_checkpoint(tmp_path / "prefixed.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_channels_last_training_matches_the_default_format(tmp_path):
    sections = {**EXACT, "train": {**EXACT["train"], "iterations": 2, "val_interval": 2}}
    plain = tiny_config(tmp_path, "plain", **sections)
    last = tiny_config(tmp_path, "channels_last", **sections)
    last.train.channels_last = True
    before = compiled_graphs()
    train(plain)
    train(last)
    assert compiled_graphs() == before  # train.compile and eval.compile are auto: off on CPU
    _assert_close_weights(_weights(plain), _weights(last), atol=1e-5)
    kernels = [w for w in _weights(last).values() if w.ndim == 4]
    assert kernels and all(w.is_contiguous(memory_format=torch.channels_last) for w in kernels)


def test_to_channels_last_converts_modules_and_4d_tensors():
    conv = to_channels_last(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = to_channels_last(torch.rand(2, 3, 5, 7))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (2, 3, 5, 7)
    assert to_channels_last(torch.rand(3, 5)).is_contiguous()


@pytest.mark.slow
def test_compiled_training_saves_plain_keys_and_resumes(tmp_path, caplog):
    # 3 iterations of an eager run against 1 compiled iteration, stopped, then resumed compiled to 3;
    # the first part validates eagerly (eval.compile false), the resumed part compiled
    sections = {**EXACT, "train": {**EXACT["train"], "iterations": 3, "val_interval": 3}}
    eager = tiny_config(tmp_path, "eager", **sections)
    train(eager)

    compiled = tiny_config(tmp_path, "compiled", **sections)
    compiled.train.compile, compiled.eval.compile = True, False
    caplog.set_level("INFO", logger="segkn")
    before = compiled_graphs()
    assert train(compiled, stop_at=1)["step"] == 1
    assert compiled_graphs() > before
    assert "torch.compile: iteration 1 took" in caplog.text
    assert list(_weights(compiled)) == list(_weights(eager))

    compiled.eval.compile = True
    assert train(compiled, run_dir=compiled.run_path, resume=True)["step"] == 3
    _assert_close_weights(_weights(eager), _weights(compiled), atol=1e-5)
    # the resumed run's checkpoint loads into a fresh eager model
    model, _ = model_from_checkpoint(compiled.run_path / "last.pth")
    assert list(model.state_dict()) == list(_weights(eager))
