"""Shared helpers of the benchmarks in this folder (not a benchmark itself).

- ``interleaved``: time several cases in rounds (warm-up first; every round runs each case once, in a
  rotating order), so that drifts in machine load hit every case alike; ``round_ratio`` is the median
  over rounds of one case's time divided by another's in the same round.
- ``environment`` / ``print_header`` / ``write_json``: what every benchmark prints at the top and records.
- ``plain_convs``: swap the forward of every KN convolution in a model for the plain convolution with
  the same weights (the floor that kernel normalization can reach), and restore it afterwards.
- ``peak_memory``: peak memory of one train step or one inference forward of a ``build_model`` model in
  a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIB = 2**20
T = TypeVar("T")


# --- arguments and environment ----------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, name: str, repeats: int, warmup: int = 1) -> None:
    """--repeats, --warmup, --threads, --device and --json (default benchmarks/results/<name>.json)."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs of each case first")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", help="where the results go")


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and a fixed seed; return --device (checked)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available on this machine")
    return device


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "segkn"], cwd=ROOT, capture_output=True)
        return head + ("+dirty(segkn)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device, dtype: torch.dtype = torch.float32, **details: Any) -> dict[str, Any]:
    """Machine, library versions, threads, device and dtype, plus ``details`` (shapes, batch, ...)."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "dtype": str(dtype).removeprefix("torch."),
    }
    return {**env, **details}


def print_header(title: str, env: Mapping[str, Any]) -> None:
    print(f"# {title}")
    for key, value in env.items():
        print(f"{key}: {value}")
    print(flush=True)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_json(path: Path, name: str, env: Mapping[str, Any], args: argparse.Namespace, results: Any) -> None:
    """Write the run (command, environment, settings, results) as JSON to ``path``."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "benchmark": name,
        "command": " ".join(["python", shown(Path(sys.argv[0])), *sys.argv[1:]]),
        "environment": dict(env),
        "settings": settings,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


# --- timing -----------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that one call of ``fn`` takes (CUDA work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    cases: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    prepare: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each case in each of ``repeats`` rounds, after ``warmup`` untimed calls each;
    ``prepare[name]``, where given, runs untimed right before each timed call of that case."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            if prepare and name in prepare:
                prepare[name]()
            times[name].append(timed(cases[name], device))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def round_ratio(times: Mapping[str, Sequence[float]], num: str, den: str) -> float:
    """Median over rounds of time[num] / time[den] measured in the same round."""
    return median([a / b for a, b in zip(times[num], times[den], strict=True)])


def linked_groups(pairs: Sequence[tuple[T, T]]) -> list[list[T]]:
    """Items that share a pair, transitively (to be timed in the same rounds), in first-seen order."""
    found: list[set[T]] = []
    for a, b in pairs:
        touching = [g for g in found if a in g or b in g]
        found = [g for g in found if g not in touching] + [set().union({a, b}, *touching)]
    order = list(dict.fromkeys(v for pair in pairs for v in pair))
    return sorted((sorted(g, key=order.index) for g in found), key=lambda g: order.index(g[0]))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats with 3 significant digits (one decimal from 10 up), None empty."""
    numeric = [all(isinstance(r[i], int | float | None) for r in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --- plain convolutions in place of KN layers ------------------------------------------------------


def kn_layers(model: nn.Module) -> list[nn.Module]:
    """Every KNConv2d / KNConv2d1x1 in ``model``."""
    from segkn.nn import KNConv2d, KNConv2d1x1

    return [m for m in model.modules() if isinstance(m, KNConv2d | KNConv2d1x1)]


def plain_conv(layer: nn.Module, x: Tensor) -> Tensor:
    """The convolution of a KN layer without its normalization: same weight, bias, stride, padding,
    dilation and groups (a strided 1x1 KN layer is a 1x1 conv with that stride; a 1x1 conv ignores
    the dilation that output-stride dilation sets, as the KN layer does), and the layer's fused ReLU
    as a separate op."""
    left, right, top, bottom = layer.pad4
    dilation = (1, 1) if tuple(layer.kernel_size) == (1, 1) else layer.dilation
    if (left, top) == (right, bottom):
        out = F.conv2d(x, layer.weight, layer.bias, layer.stride, (top, left), dilation, layer.groups)
    else:
        x = F.pad(x, layer.pad4)
        out = F.conv2d(x, layer.weight, layer.bias, layer.stride, 0, dilation, layer.groups)
    return torch.relu(out) if getattr(layer, "relu", False) else out


def patch_plain_convs(model: nn.Module) -> Callable[[], None]:
    """Make every KN conv of ``model`` run ``plain_conv`` instead of its own forward; returns the undo."""
    layers = kn_layers(model)
    saved = [m.__dict__.get("forward") for m in layers]  # an instance-level forward, if one was set
    for m in layers:
        m.forward = types.MethodType(plain_conv, m)

    def restore() -> None:
        for m, forward in zip(layers, saved, strict=True):
            if forward is None:
                del m.forward
            else:
                m.forward = forward

    return restore


@contextlib.contextmanager
def plain_convs(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every KN conv of ``model`` runs ``plain_conv`` instead of its own forward."""
    restore = patch_plain_convs(model)
    try:
        yield model
    finally:
        restore()


# --- one train step / one inference forward ----------------------------------------------------------


def make_step(model: nn.Module, x: Tensor, mode: str, num_classes: int) -> Callable[[], None]:
    """A call running one SGD-momentum train step (cross entropy on random labels) or one eval forward
    under no_grad. Sets the model's train/eval mode."""
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(x)

        return infer
    assert mode == "train", mode
    model.train()
    target = torch.randint(0, num_classes, (x.shape[0], *x.shape[2:]), device=x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target, ignore_index=255).backward()
        optimizer.step()

    return train


# --- peak memory in a fresh process -----------------------------------------------------------------


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MiB, None elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def _peak_rss_mib() -> float:
    """Peak RSS of this process: VmHWM where Linux has it (``_reset_peak_rss`` can reset it), else
    ru_maxrss."""
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 if sys.platform != "darwin" else MIB)  # KiB on Linux, bytes on macOS


def _reset_peak_rss() -> bool:
    """Give freed heap memory back to the OS (glibc keeps it), then set the peak RSS to the current
    RSS (Linux >= 4.0); False where the peak cannot be reset."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_CONTEXT: multiprocessing.context.BaseContext | None = None


def _memory_context() -> multiprocessing.context.BaseContext:
    """Processes forked from a server that has only imported torch and segkn (a fresh interpreter
    spends ~8 s on those imports); each measurement gets a new one. Spawn where there is no forkserver."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["torch", "segkn.models", __name__])
        else:
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def peak_memory(
    model_cfg: Mapping[str, Any],
    mode: str,
    batch: int,
    size: Sequence[int],
    device: torch.device,
    plain: bool = False,
    compile: bool = False,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Memory of one ``mode`` step ("train" or "infer") of ``build_model(model_cfg)`` in a fresh process.

    CPU: RSS right after building the model and its input (``model_mib``) and the peak RSS of the
    process (``peak_mib``); CUDA: ``torch.cuda.memory_allocated`` after building and
    ``max_memory_allocated``. ``step_mib`` = peak - model, what the step itself adds (activations,
    gradients, optimizer state). With ``compile``, a first step compiles; the memory is then measured
    from there (on CPU ``model_mib`` includes what the compiled code and the compiler keep resident).
    """
    spec = {
        "model": dict(model_cfg),
        "mode": mode,
        "batch": batch,
        "size": list(size),
        "device": str(device),
        "plain": plain,
        "compile": compile,
        "threads": torch.get_num_threads(),
    }
    context = _memory_context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_memory_child, args=(spec, send))
    process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise TimeoutError(f"memory process gave no answer in {timeout} s: {spec}")
        ok, result = receive.recv()
    except EOFError:
        process.join(10)
        ok, result = False, f"it died with exit code {process.exitcode} (out of memory?)"
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    if not ok:
        raise RuntimeError(f"memory process failed on {spec}:\n{result}")
    return result


def _memory_child(spec: Mapping[str, Any], send: multiprocessing.connection.Connection) -> None:
    try:
        send.send((True, _measure_memory(spec)))
    except BaseException:
        send.send((False, traceback.format_exc()))


def _measure_memory(spec: Mapping[str, Any]) -> dict[str, Any]:
    from segkn.models import build_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    model = build_model(spec["model"]).to(device)
    if spec["plain"]:
        patch_plain_convs(model)
    runnable = torch.compile(model) if spec["compile"] else model
    x = torch.rand(spec["batch"], 3, *spec["size"], device=device)
    if spec["compile"]:
        make_step(runnable, x, spec["mode"], spec["model"]["num_classes"])()  # compiles
        model.zero_grad(set_to_none=True)
    step = make_step(runnable, x, spec["mode"], spec["model"]["num_classes"])
    if cuda:
        torch.cuda.synchronize(device)
        model_mib = torch.cuda.memory_allocated(device) / MIB
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak_reset = _reset_peak_rss()  # the forked process starts with its parent's peak
        model_mib = _status_mib("VmRSS") or _peak_rss_mib()
    step()
    if cuda:
        torch.cuda.synchronize(device)
        peak_mib = torch.cuda.max_memory_allocated(device) / MIB
        kind = "cuda max_memory_allocated"
    else:
        peak_mib = _peak_rss_mib()
        kind = "peak RSS (VmHWM)" if peak_reset else "peak RSS (ru_maxrss, not reset: includes the start)"
    return {"model_mib": model_mib, "peak_mib": peak_mib, "step_mib": peak_mib - model_mib, "measure": kind}
