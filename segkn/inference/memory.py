"""How much memory whole-image inference takes and how much there is: what ``mode="auto"`` decides by.

Activation memory grows with the pixels a model sees at once (0.4 to 1.3 KB per pixel for the shipped
float32 models on a CPU), so a large photo run whole can take tens of GB. ``Segmenter`` runs an image
whole up to DEFAULT_MAX_PIXELS and slides windows over larger ones; before a whole-image run it
compares an estimate with the memory available. The estimate comes from a probe: one forward pass at
PROBE_SIZE under a dispatch mode that adds up the tensors alive at once, scaled by SAFETY for what it
does not see (library workspaces, allocator slack), plus the image-sized buffers around the model.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FALLBACK_BYTES_PER_PIXEL",
    "MODES",
    "available_bytes",
    "auto_window",
    "bytes_text",
    "peak_bytes_per_pixel",
    "whole_image_bytes",
]

MODES = ("auto", "whole", "slide")  # how Segmenter runs the model over an image
# Images up to 2048 x 2048 run whole in mode "auto" (Cityscapes' 1024 x 2048 among them); a larger one
# slides windows of a quarter of it, four at a time, so a model never sees more pixels at once.
DEFAULT_MAX_PIXELS = 2048 * 2048
WINDOW_BATCH = 4  # windows per forward pass in segkn.models.prediction.slide_logits
PROBE_SIZE = (128, 128)
SAFETY = 1.5  # measured peak RSS over the tensors the probe counts: 1.05 to 1.55 for the shipped models
# models that cannot be probed (ONNX Runtime): about the largest shipped model's float32 need, safety included
FALLBACK_BYTES_PER_PIXEL = 2048


def auto_window(max_pixels: int, multiple: int = 32) -> list[int]:
    """The square sliding window of mode "auto": WINDOW_BATCH of them hold at most ``max_pixels``."""
    side = int((max_pixels / WINDOW_BATCH) ** 0.5)
    side = max(multiple, side // multiple * multiple)
    return [side, side]


def bytes_text(count: float) -> str:
    """A byte count for people: ``850 MiB``, ``13.9 GiB``."""
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def whole_image_bytes(pixels: float, model_bytes_per_pixel: float, num_classes: int) -> float:
    """Rough bytes that whole-image inference of ``pixels`` takes: the model's activations, plus the
    input tensors (float32 RGB, twice), the logits, probabilities and their sum (float32, one per class)
    and the label map (int64, twice)."""
    return pixels * (model_bytes_per_pixel + 24 + 12 * num_classes + 16)


def available_bytes(device: torch.device) -> int | None:
    """Memory that a computation on ``device`` can still take (free GPU memory plus what torch's cache
    holds unused; the operating system's MemAvailable on the CPU), or None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class _LiveTensors(TorchDispatchMode):
    """Adds up the storage of the tensors that operations create and that are still referenced."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, list[int]] = {}  # data pointer -> [bytes, tensors that use it]
        self.seen: set[int] = set()
        self.now = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, Tensor) and id(tensor) not in self.seen:
                self._add(tensor)
        return out

    def _add(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.storages:
            self.storages[pointer] = [storage.nbytes(), 0]
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.storages[pointer][1] += 1
        self.seen.add(id(tensor))
        weakref.finalize(tensor, self._drop, id(tensor), pointer)

    def _drop(self, key: int, pointer: int) -> None:
        self.seen.discard(key)
        entry = self.storages.get(pointer)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self.storages[pointer]
                self.now -= entry[0]


@torch.no_grad()
def peak_bytes_per_pixel(forward: Callable[[Tensor], Tensor], probe: Tensor) -> float:
    """SAFETY times the peak bytes of the tensors alive at once in ``forward(probe)``, per input pixel."""
    with _LiveTensors() as live:
        forward(probe)
    return SAFETY * live.peak / (probe.shape[0] * probe.shape[-2] * probe.shape[-1])
