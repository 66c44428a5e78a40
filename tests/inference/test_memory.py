"""The memory estimates behind Segmenter's mode auto: the live-tensor probe, windows, memory available."""

import torch

from segkn.inference.memory import SAFETY, auto_window, available_bytes, peak_bytes_per_pixel


def test_the_probe_counts_the_tensors_alive_at_once():
    def forward(x: torch.Tensor) -> torch.Tensor:
        a = x * 2
        b = a + 1  # a and b alive: two copies of x
        del a
        view = b[:, :, :4]  # a view: no new storage
        return view * 3  # b and the product (smaller) alive

    x = torch.rand(1, 3, 32, 32)
    assert peak_bytes_per_pixel(forward, x) == SAFETY * 2 * 3 * 4  # float32, 3 channels


def test_auto_windows_and_the_memory_available():
    assert auto_window(2048 * 2048) == [1024, 1024]  # four windows at a time hold max_pixels
    assert auto_window(4 * 100 * 100, 8) == [96, 96]  # on the model's grid
    assert auto_window(10, 8) == [8, 8]
    free = available_bytes(torch.device("cpu"))
    assert free is None or free > 0
