"""wrap_model under several processes: BatchNorm becomes SyncBatchNorm on CUDA, a KN model is wrapped as
it is. DistributedDataParallel itself is replaced by a stand-in, so that no process group (nor GPU) is
needed to see what it would be given. process_group: which group a block joins and leaves."""

import logging

import pytest
import torch
import torch.distributed as dist
from torch import nn

from segkn.engine import distributed
from segkn.models import build_model

SMALL = {"arch": "unet", "encoder_depth": 3, "decoder_channels": [16, 16, 16], "num_classes": 3}


class _DDP:
    def __init__(self, module, device_ids=None):
        self.module, self.device_ids = module, device_ids


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", _DDP)


def _norm_layers(model):
    return [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_batchnorm_becomes_syncbatchnorm_on_cuda(two_processes):
    torch.manual_seed(0)
    model = build_model({**SMALL, "encoder": "resnet18", "norm": "bn"})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count = len(_norm_layers(model))
    wrapped = distributed.wrap_model(model, torch.device("cuda", 1))
    assert isinstance(wrapped, _DDP) and wrapped.device_ids == [1]
    assert _norm_layers(wrapped.module) == [nn.SyncBatchNorm] * count and count > 0
    converted = wrapped.module.state_dict()
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], v) for k, v in state.items())  # same weights and statistics


def test_batchnorm_stays_per_process_on_cpu_with_a_warning(two_processes, caplog):
    model = build_model({**SMALL, "encoder": "resnet18", "norm": "bn"})
    with caplog.at_level(logging.WARNING, logger="segkn"):
        wrapped = distributed.wrap_model(model, torch.device("cpu"))
    assert wrapped.module is model and wrapped.device_ids is None
    assert set(_norm_layers(model)) == {nn.BatchNorm2d}
    assert "SyncBatchNorm needs CUDA" in caplog.text


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_kn_model_is_wrapped_as_it_is(two_processes, device):
    model = build_model({**SMALL, "encoder": "knresnet18", "norm": "kn"})
    assert distributed.wrap_model(model, torch.device(device)).module is model


def test_one_process_is_not_wrapped():
    model = build_model({**SMALL, "encoder": "resnet18", "norm": "bn"})
    assert distributed.wrap_model(model, torch.device("cuda")) is model


def _one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    return distributed.DistInfo()


def test_process_group_without_torchrun_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group("cpu") as info:
        assert info == distributed.DistInfo() and distributed.world_size() == 1
    assert not dist.is_initialized()


def test_process_group_made_for_the_block_is_destroyed_even_after_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "init_distributed", lambda device_type: _one_process_group(tmp_path))
    with pytest.raises(KeyError), distributed.process_group("cpu"):
        assert dist.is_initialized()
        raise KeyError("boom")
    assert not dist.is_initialized()


def test_process_group_that_already_exists_is_left_standing(tmp_path):
    _one_process_group(tmp_path)
    try:
        with distributed.process_group("cpu") as info:
            assert info.rank == 0 and info.world_size == 1
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
