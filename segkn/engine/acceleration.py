"""Optional speed-ups of training, evaluation and inference: ``torch.compile`` and channels_last.

Models are compiled in place (``nn.Module.compile``), before any DDP wrapper, as PyTorch recommends:
the module keeps its class and its ``state_dict`` keys (no ``_orig_mod.`` prefix), so checkpoints are
the same whether or not a run was compiled. Shapes follow torch's automatic dynamic shapes: the first
call compiles for its input size; a call at another size recompiles once with the sizes that changed
made symbolic, and later sizes reuse that graph.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

from segkn.config import Toggle

__all__ = [
    "RECOMPILE_LIMIT",
    "compile_enabled",
    "compiled_graphs",
    "eager_unless",
    "logged_compile",
    "prepare_model",
    "to_channels_last",
]

log = logging.getLogger(__name__)
T = TypeVar("T", Tensor, nn.Module)

# Graphs torch keeps per compiled function before it runs the function eagerly (with a warning). A
# model needs one or two per phase (training; evaluation at batch 1 and at larger batches): one for
# the first size, one with dynamic sizes. All segkn models share one forward function
# (SegmentationModel.forward), so the cap leaves room for a few models in one process.
RECOMPILE_LIMIT = 16


def compile_enabled(setting: Toggle, device: torch.device) -> bool:
    """Whether a ``train.compile`` / ``eval.compile`` setting (auto | true | false) compiles on ``device``.

    ``auto`` compiles on CUDA only: on a CPU the minutes spent compiling outweigh what a short run saves.
    """
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def to_channels_last(x: T) -> T:
    """A module (its parameters and buffers, in place) or a 4-D tensor in torch.channels_last format."""
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def prepare_model(model: nn.Module, device: torch.device, compile: bool, channels_last: bool) -> nn.Module:
    """``model`` moved to ``device``, in channels_last format and compiled (inductor) in place, as asked."""
    model.to(device)
    if channels_last:
        to_channels_last(model)
    if compile:
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        model.compile(dynamic=None)
    return model


def eager_unless(enabled: bool) -> contextlib.AbstractContextManager[object]:
    """A context in which compiled modules run eagerly unless ``enabled`` (e.g. with eval.compile off)."""
    return contextlib.nullcontext() if enabled else torch.compiler.set_stance("force_eager")


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process so far (first compiles and recompiles)."""
    if "torch._dynamo" not in sys.modules:  # not imported: nothing was compiled (and importing is slow)
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def logged_compile(what: str) -> Iterator[None]:
    """Log how long the block took when torch.compile compiled graphs in it (a first call, a recompile)."""
    before, start = compiled_graphs(), time.perf_counter()
    yield
    graphs = compiled_graphs() - before
    if graphs:
        log.info(
            "torch.compile: %s took %.1f s, compiling %d graph(s) (%d in this process so far)",
            what,
            time.perf_counter() - start,
            graphs,
            compiled_graphs(),
        )
