"""Train step and inference of whole models: time, peak memory and forward FLOPs, KN against its floors.

    .venv/bin/python benchmarks/kn_model.py                                  # batch 2 x 3 x 256 x 512
    .venv/bin/python benchmarks/kn_model.py --size 512 1024 --cases a c --compile --device cuda

Cases (pairs of models, same output stride, 19 classes, untrained weights):
  a  each KN model against an identical copy (same weights) whose every KNConv2d / KNConv2d1x1 runs
     its convolution alone (``_common.patch_plain_convs``; a copy, so that both run side by side,
     compiled too): DeepLabV3 and U-Net on KNResNet-18, DeepLabV3 on ResNet-50 with norm kn;
  b  DeepLabV3 / U-Net on KNResNet-18 / -50 against the same decoder on BN ResNet-18 / -50;
  c  DeepLabV3 on ResNet-50 with norm kn against norm bn (same layout and FLOPs).
``--compile`` adds a torch.compile (inductor) variant of every model: compile time is reported apart
(the first call; inductor's on-disk cache shortens it on later runs), then the usual warm-up.

Models that share a case are timed in the same rounds. A train step is SGD with momentum on a cross
entropy loss; inference is an eval-mode forward under no_grad. Memory: each model and mode in a fresh
process (CPU: peak RSS, and the RSS after building the model, so that the step's own part shows;
CUDA: max_memory_allocated). FLOPs: torch.utils.flop_counter (convolutions and matmuls; the
normalization's own arithmetic is not counted). The default size, 256 x 512, lets all cases fit
10 minutes on 2 CPU cores; ``--size 512 1024`` is the Cityscapes crop.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import _common as C
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

NUM_CLASSES = 19


@dataclass(frozen=True)
class Variant:
    """One model as timed: a ``build_model`` mapping, maybe with plain convs, maybe compiled."""

    arch: str
    encoder: str
    norm: str = "kn"
    plain: bool = False
    compiled: bool = False

    @property
    def name(self) -> str:
        encoder = self.encoder if self.encoder.startswith("knresnet") else f"{self.encoder}-{self.norm}"
        return f"{self.arch}/{encoder}" + " +plain" * self.plain + " +compile" * self.compiled

    def model_cfg(self, output_stride: int) -> dict[str, Any]:
        return dict(
            arch=self.arch,
            encoder=self.encoder,
            norm=self.norm,
            num_classes=NUM_CLASSES,
            output_stride=output_stride,
        )


def cases(names: Iterable[str]) -> list[tuple[str, Variant, Variant]]:
    """(case, numerator, denominator) pairs of the named cases."""
    out: list[tuple[str, Variant, Variant]] = []
    if "a" in names:
        for arch, encoder in (("deeplabv3", "knresnet18"), ("unet", "knresnet18"), ("deeplabv3", "resnet50")):
            out.append(("a KN/plain", Variant(arch, encoder), Variant(arch, encoder, plain=True)))
    if "b" in names:
        for arch in ("deeplabv3", "unet"):
            for depth in (18, 50):
                kn, bn = Variant(arch, f"knresnet{depth}"), Variant(arch, f"resnet{depth}", "bn")
                out.append(("b KN/BN", kn, bn))
    if "c" in names:
        out.append(("c kn/bn", Variant("deeplabv3", "resnet50"), Variant("deeplabv3", "resnet50", "bn")))
    return out


def with_compiled(pairs: list[tuple[str, Variant, Variant]]) -> list[tuple[str, Variant, Variant]]:
    """Each pair again, compiled, and every model's compiled/eager pair."""
    compiled = [(f"{case} compiled", _compiled(a), _compiled(b)) for case, a, b in pairs]
    models = dict.fromkeys(v for _, a, b in pairs for v in (a, b))
    return pairs + compiled + [("compiled/eager", _compiled(v), v) for v in models]


def _compiled(v: Variant) -> Variant:
    return Variant(v.arch, v.encoder, v.norm, v.plain, compiled=True)


def build(group: list[Variant], output_stride: int, device: torch.device) -> dict[Variant, nn.Module]:
    """Every model of a group; a plain variant is a copy of its KN model with plain convs."""
    from segkn.models import build_model

    eager: dict[Variant, nn.Module] = {}
    for v in group:
        base = Variant(v.arch, v.encoder, v.norm)
        if base not in eager:
            torch.manual_seed(0)
            eager[base] = build_model(base.model_cfg(output_stride)).to(device)
    models: dict[Variant, nn.Module] = {}
    for v in group:
        model = eager[Variant(v.arch, v.encoder, v.norm)]
        if v.plain:
            model = copy.deepcopy(model)
            C.patch_plain_convs(model)
        models[v] = torch.compile(model) if v.compiled else model
    return models


def forward_gflops(model: nn.Module, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(parser, "kn_model", repeats=3)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices="abc", default=list("abc"))
    parser.add_argument("--only", default="", help="keep the pairs whose first model's name contains this")
    parser.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--compile", action="store_true", help="add torch.compile (inductor) variants")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args()
    device = C.setup(args)

    pairs = [p for p in cases(args.cases) if args.only in p[1].name]
    if args.compile:
        pairs = with_compiled(pairs)
    shape = [args.batch, 3, *args.size]
    env = C.environment(device, input=shape, output_stride=args.output_stride, compile=args.compile)
    C.print_header("kn_model: train step and inference of whole models", env)
    x = torch.rand(*shape, device=device)

    rows: dict[tuple[str, str], dict[str, Any]] = {}  # (model, mode) -> measurements
    time_ratios: dict[tuple[str, str, str], float] = {}  # (model, baseline, mode) -> ratio
    for group in C.linked_groups([(a, b) for _, a, b in pairs]):
        models = build(group, args.output_stride, device)
        gflops = {v.name: forward_gflops(m, x) for v, m in models.items() if not v.compiled}
        for mode in args.modes:
            steps = {v.name: C.make_step(m, x, mode, NUM_CLASSES) for v, m in models.items()}
            compile_s = {v.name: C.timed(steps[v.name], device) for v in group if v.compiled}
            times = C.interleaved(steps, args.repeats, args.warmup, device)
            for v in group:
                row = rows[(v.name, mode)] = {
                    "model": v.name,
                    "mode": mode,
                    "median_ms": 1000 * C.median(times[v.name]),
                    "times_ms": [1000 * t for t in times[v.name]],
                    "gflops": gflops[v.name.removesuffix(" +compile")],
                    "compile_s": compile_s.get(v.name),
                }
                if not args.no_memory:
                    cfg = v.model_cfg(args.output_stride)
                    row |= C.peak_memory(cfg, mode, args.batch, args.size, device, v.plain, v.compiled)
                memory = f", peak {row['peak_mib']:.0f} MiB" if "peak_mib" in row else ""
                print(f"{v.name} {mode}: {row['median_ms']:.1f} ms{memory}", flush=True)
            for _, a, b in pairs:
                if a in group:
                    time_ratios[(a.name, b.name, mode)] = C.round_ratio(times, a.name, b.name)
        del models, steps

    print("\n## per model\n")
    keys = ["median_ms", "gflops", "peak_mib", "model_mib", "step_mib", "compile_s"]
    headers = ["model", "mode", "median ms", "GFLOPs fwd", "peak MiB", "model MiB", "step MiB", "compile s"]
    print(
        C.markdown_table(headers, [[r["model"], r["mode"], *(r.get(k) for k in keys)] for r in rows.values()])
    )

    print("\n## ratios (time: median of per-round ratios; memory: peak / peak, step / step)\n")
    ratios = []
    for case, a, b in pairs:
        for mode in args.modes:
            ra, rb = rows[(a.name, mode)], rows[(b.name, mode)]
            ratio = {"case": case, "model": a.name, "baseline": b.name, "mode": mode}
            ratio["time"] = time_ratios[(a.name, b.name, mode)]
            for key in ("peak", "step"):
                if f"{key}_mib" in ra:
                    ratio[f"{key}_memory"] = ra[f"{key}_mib"] / rb[f"{key}_mib"]
            ratios.append(ratio)
    keys = ["case", "model", "baseline", "mode", "time", "peak_memory", "step_memory"]
    headers = ["case", "model", "against", "mode", "time x", "peak mem x", "step mem x"]
    print(C.markdown_table(headers, [[r.get(k) for k in keys] for r in ratios]))
    C.write_json(args.json, "kn_model", env, args, {"models": list(rows.values()), "ratios": ratios})


if __name__ == "__main__":
    main()
