"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run on one CPU thread: on a shared machine, several torch threads each wait for the others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
