"""Engine tests run on one CPU thread (see tests/conftest.py)."""

import pytest
import torch

from segkn.models import build_model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def kn_model():
    torch.manual_seed(0)
    cfg = {"arch": "unet", "encoder": "knresnet18", "encoder_depth": 3, "num_classes": 3}
    return build_model({**cfg, "decoder_channels": [16, 16, 16]}).eval()
