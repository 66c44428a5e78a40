import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from segkn.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def make_payload(step=10):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 - t / 100)
    return {
        "config": {"model": {"arch": "unet", "num_classes": 2}, "train": {"lr": 0.1, "crop": [8, 8]}},
        "model": model.state_dict(),
        "classes": ["background", "thing"],
        "palette": [[0, 0, 0], [255, 0, 0]],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best": {"miou": 0.5, "step": 8},
        "rng": capture_rng_state(),
    }


def only_files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_round_trip(tmp_path):
    payload = make_payload()
    path = tmp_path / "ckpt" / "last.pth"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["format"] == "segkn-checkpoint" and loaded["version"] == 1
    assert loaded["config"] == payload["config"] and loaded["classes"] == payload["classes"]
    assert loaded["step"] == 10 and loaded["best"] == {"miou": 0.5, "step": 8}
    for key, value in payload["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["optimizer"]["param_groups"] == payload["optimizer"]["param_groups"]
    # the file is readable by plain torch.load with weights_only=True
    assert torch.load(path, weights_only=True)["palette"] == payload["palette"]
    assert only_files(path.parent) == ["last.pth"]


def test_unsafe_value_rejected_at_save(tmp_path):
    payload = make_payload()
    payload["best"] = {"miou": np.float64(0.5)}
    with pytest.raises(TypeError, match=r"checkpoint\['best'\]\['miou'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "x.pth", payload)
    assert only_files(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(path, make_payload(step=1))
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_payload(step=2))
    assert path.read_bytes() == before and only_files(tmp_path) == ["last.pth"]
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


class _FailingFile:
    """A file whose third write raises ``error`` (Ctrl-C arriving in the middle of a write, a full disk)."""

    def __init__(self, f, error):
        self.f, self.error, self.writes = f, error, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise self.error
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_what_interrupts_a_write_is_raised_as_it_is(tmp_path, monkeypatch, error):
    # torch.save reports it as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"
    path = tmp_path / "last.pth"
    save_checkpoint(path, make_payload(step=1))
    save = torch.save
    monkeypatch.setattr(
        torch, "save", lambda obj, f, *args, **kw: save(obj, _FailingFile(f, error), *args, **kw)
    )
    with pytest.raises(type(error)) as raised:
        save_checkpoint(path, make_payload(step=2))
    assert raised.value is error
    monkeypatch.undo()
    assert only_files(tmp_path) == ["last.pth"] and load_checkpoint(path)["step"] == 1


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pth")
    path = tmp_path / "last.pth"
    save_checkpoint(path, make_payload())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="last.pth: cannot read the checkpoint; the file is truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


class OpensFile:
    """Unpickling this object creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunsShell:
    """Unpickling this object runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("attack", [OpensFile, RunsShell])
def test_malicious_pickle_refused_and_not_executed(tmp_path, writer, attack):
    marker = tmp_path / "pwned"
    evil = {"format": "segkn-checkpoint", "version": 1, "model": attack(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pth: refused by the safe loader") as err:
        load_checkpoint(path)
    assert "Nothing in the file was executed" in str(err.value) and "GLOBAL" in str(err.value)
    assert not marker.exists()
    # the payload is really harmful: an unsafe load runs it
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_wrong_format_messages(tmp_path):
    model = nn.Linear(3, 2)
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    with pytest.raises(CheckpointError, match=r"raw.pth: not a segkn checkpoint: .*raw model state_dict"):
        load_checkpoint(raw)
    official = tmp_path / "knresnet18_imagenet.pth"
    torch.save({"model": model.state_dict(), "epoch": 90}, official)
    with pytest.raises(CheckpointError, match=r"classifier training checkpoint.*model.encoder_weights"):
        load_checkpoint(official)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tensor)
    newer = tmp_path / "newer.pth"
    torch.save({"format": "segkn-checkpoint", "version": 99}, newer)
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        load_checkpoint(newer)


def draw():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn(1).tolist())


def test_rng_round_trip_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn(1)  # leaves a cached gaussian in numpy's state
    payload = make_payload()
    payload["rng"] = capture_rng_state()
    expected = draw()
    path = tmp_path / "last.pth"
    save_checkpoint(path, payload)
    draw()  # move every generator on
    restore_rng_state(load_checkpoint(path)["rng"])
    assert draw() == expected


def test_an_onnx_file_given_as_a_checkpoint_is_named_as_one(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    for name, producer in [("model.onnx", "pytorch"), ("exported.pth", "")]:  # by content, not by name
        model = helper.make_model(graph, producer_name=producer)
        onnx.save(model, str(tmp_path / name))
        with pytest.raises(
            CheckpointError, match=rf"{name}: this is an ONNX model file, not a segkn checkpoint"
        ):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="segkn infer --onnx"):
        load_checkpoint(tmp_path / "model.onnx")
