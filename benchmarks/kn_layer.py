"""One KN layer against its floors: KNConv2d vs plain conv vs conv + BatchNorm2d vs the unfold reference.

    .venv/bin/python benchmarks/kn_layer.py                    # every shape, batch 1, 512 x 1024 input
    .venv/bin/python benchmarks/kn_layer.py --batch 2 --repeats 5 --device cuda
    .venv/bin/python benchmarks/kn_layer.py --encoders resnet50 --modes fwd+bwd

The shapes are the distinct KN convolutions (KNConv2d and KNConv2d1x1, with their padding, stride
and dilation) of the KNResNet-18, KNResNet-50 and ResNet-50 (norm kn) encoders at output stride 16
for an input of --size, found with forward hooks (on the meta device: at the real size, at no cost).
Each shape runs four ways on the same input: the KN layer itself (a copy of the encoder's module),
``plain_conv`` (its convolution alone: same weights, stride, padding, dilation), that convolution
followed by BatchNorm2d in train mode (batch statistics), and the unfold-based reference of
tests/nn/reference.py (every C x kh x kw unit materialized; in training its statistics come from a
dropout copy, as the layer's do). Modes: ``fwd`` is inference (KN layer in eval mode, under no_grad;
BatchNorm still computes batch statistics), ``fwd+bwd`` a training forward and the gradients of
input, weights and biases. Ratios are medians of per-round ratios; the encoder totals add every
layer's median time times the number of times the encoder runs that shape.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _common as C
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.append(str(C.ROOT))  # tests/nn/reference.py, after any installed segkn
from tests.nn.reference import knconv_reference  # noqa: E402

ENCODERS = ("knresnet18", "knresnet50", "resnet50")
VARIANTS = ("kn", "conv", "conv+bn", "unfold")


@dataclass
class Shape:
    """One distinct KN convolution: its module (weights included), input size and users."""

    layer: nn.Module
    input_hw: tuple[int, int]
    uses: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> tuple[Any, ...]:
        m = self.layer
        conv = (m.in_channels, m.out_channels, m.kernel_size, m.stride, tuple(m.pad4), m.dilation, m.groups)
        return (type(m).__name__, *conv, self.input_hw)

    def describe(self) -> str:
        m, (h, w) = self.layer, self.input_hw
        text = f"{m.in_channels}->{m.out_channels} k{m.kernel_size[0]}x{m.kernel_size[1]} s{m.stride[0]}"
        if any(m.pad4):
            text += f" p{','.join(map(str, m.pad4))}"
        if m.dilation != (1, 1) and m.kernel_size != (1, 1):
            text += f" d{m.dilation[0]}"
        return f"{text} @{h}x{w}"


def build_encoder(name: str, output_stride: int) -> nn.Module:
    from segkn.models.knresnet import KNResNetEncoder
    from segkn.models.resnet import ResNetEncoder

    torch.manual_seed(0)
    if name.startswith("knresnet"):
        return KNResNetEncoder(name, output_stride=output_stride)
    return ResNetEncoder(name, norm="kn", output_stride=output_stride)


def _record_calls(encoder: nn.Module, x: Tensor) -> list[tuple[str, tuple[int, int]]]:
    names = {m: n for n, m in encoder.named_modules()}
    calls: list[tuple[str, tuple[int, int]]] = []

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        calls.append((names[module], tuple(args[0].shape[-2:])))

    hooks = [m.register_forward_hook(record) for m in C.kn_layers(encoder)]
    with torch.no_grad():
        encoder.eval()(x)
    for h in hooks:
        h.remove()
    return [(n, (int(h), int(w))) for n, (h, w) in calls]


def conv_inputs(encoder: nn.Module, size: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
    """(module name, input H x W) of every KN conv call of one forward at ``size``: on the meta device
    (no memory, no time), or on the CPU where a layer cannot run on meta."""
    try:
        return _record_calls(copy.deepcopy(encoder).to("meta"), torch.empty(1, 3, *size, device="meta"))
    except (NotImplementedError, RuntimeError):
        return _record_calls(encoder, torch.zeros(1, 3, *size))


def collect_shapes(encoders: list[str], size: tuple[int, int], output_stride: int) -> list[Shape]:
    shapes: dict[tuple[Any, ...], Shape] = {}
    for name in encoders:
        encoder = build_encoder(name, output_stride)
        modules = dict(encoder.named_modules())
        for module_name, hw in conv_inputs(encoder, size):
            shape = Shape(modules[module_name], hw)
            shape = shapes.setdefault(shape.key, shape)
            shape.uses[name] = shape.uses.get(name, 0) + 1
    return list(shapes.values())


Way = tuple[Callable[[Tensor], Tensor], list[Tensor]]  # a function of the input, and its parameters


def variants(shape: Shape, device: torch.device) -> dict[str, Way]:
    """name -> (function of the input, its parameters) for the four ways of computing one shape."""
    layer = copy.deepcopy(shape.layer).to(device)
    bn = nn.BatchNorm2d(layer.out_channels).to(device).train()

    def unfold(x: Tensor) -> Tensor:
        stats = None
        if layer.training and layer.dropout_p > 0:
            stats = F.pad(F.dropout(x, layer.dropout_p, True), layer.pad4)
        assert layer.groups == 1, "the reference has no groups"
        pad4 = tuple(layer.pad4)
        return knconv_reference(
            x, layer.weight, layer.bias, layer.stride, pad4, layer.dilation, layer.eps, stats
        )

    params = [p for p in (layer.weight, layer.bias) if p is not None]
    return {
        "kn": (layer, params),
        "conv": (lambda x: C.plain_conv(layer, x), params),
        "conv+bn": (lambda x: bn(C.plain_conv(layer, x)), [*params, bn.weight, bn.bias]),
        "unfold": (unfold, params),
    }


def cases(shape: Shape, mode: str, batch: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """Zero-argument calls of each variant in ``mode``."""
    ways = variants(shape, device)
    layer = ways["kn"][0]
    x = torch.randn(batch, layer.in_channels, *shape.input_hw, device=device)
    if mode == "fwd":
        layer.eval()

        def forward(fn: Callable[[Tensor], Tensor]) -> Callable[[], object]:
            def run() -> Tensor:
                with torch.no_grad():
                    return fn(x)

            return run

        return {name: forward(fn) for name, (fn, _) in ways.items()}
    layer.train()
    x.requires_grad_(True)
    grad = torch.randn_like(layer(x).detach())

    def train(fn: Callable[[Tensor], Tensor], params: list[Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(fn(x), [x, *params], grad)

    return {name: train(fn, params) for name, (fn, params) in ways.items()}


def ratios(times: dict[str, Any]) -> dict[str, float]:
    """kn/conv and kn/conv+bn (what normalizing costs) and unfold/kn (the speed-up over the reference)."""
    out = {f"kn/{k}": C.round_ratio(times, "kn", k) for k in ("conv", "conv+bn") if k in times}
    if "unfold" in times:
        out["unfold/kn"] = C.round_ratio(times, "unfold", "kn")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(parser, "kn_layer", repeats=3)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    parser.add_argument("--modes", nargs="+", choices=("fwd", "fwd+bwd"), default=["fwd", "fwd+bwd"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    args = parser.parse_args()
    device = C.setup(args)
    if "kn" not in args.variants:
        parser.error("--variants must include kn (every ratio is against it)")

    shapes = collect_shapes(args.encoders, tuple(args.size), args.output_stride)
    details = dict(encoders=args.encoders, output_stride=args.output_stride, shapes=len(shapes))
    env = C.environment(device, input=[args.batch, 3, *args.size], **details)
    C.print_header("kn_layer: one KN conv against plain conv, conv + BN and the unfold reference", env)

    results: list[dict[str, Any]] = []
    for i, shape in enumerate(shapes):
        for mode in args.modes:
            all_calls = cases(shape, mode, args.batch, device)
            calls = {name: all_calls[name] for name in args.variants}
            times = C.interleaved(calls, args.repeats, args.warmup, device)
            row = {
                "shape": shape.describe(),
                "layer": shape.key[0],
                "mode": mode,
                "uses": shape.uses,
                "median_ms": {k: 1000 * C.median(t) for k, t in times.items()},
                "ratios": ratios(times),
            }
            results.append(row)
            ms = ", ".join(f"{k} {v:.2f}" for k, v in row["median_ms"].items())
            print(f"[{i + 1}/{len(shapes)}] {mode} {row['shape']}: {ms} ms", flush=True)

    ratio_names = list(results[0]["ratios"])
    for mode in args.modes:
        print(f"\n## {mode}: median ms per call, and medians of per-round ratios\n")
        rows = [r for r in results if r["mode"] == mode]
        headers = ["layer", "shape", "used by", *(f"{v} ms" for v in args.variants), *ratio_names]
        table = []
        for r in rows:
            uses = " ".join(f"{k}x{n}" for k, n in r["uses"].items())
            table.append([r["layer"], r["shape"], uses, *r["median_ms"].values(), *r["ratios"].values()])
        print(C.markdown_table(headers, table))

    print("\n## encoder totals: sum of (median ms x uses) over its layers; ratios of the totals\n")
    totals = []
    for encoder in args.encoders:
        for mode in args.modes:
            rows = [r for r in results if r["mode"] == mode and encoder in r["uses"]]
            ms = {v: sum(r["median_ms"][v] * r["uses"][encoder] for r in rows) for v in args.variants}
            total_ratios = {name: ms[name.split("/")[0]] / ms[name.split("/")[1]] for name in ratio_names}
            totals.append({"encoder": encoder, "mode": mode, "total_ms": ms, "ratios": total_ratios})
    headers = ["encoder", "mode", *(f"{v} ms" for v in args.variants), *ratio_names]
    table = [[t["encoder"], t["mode"], *t["total_ms"].values(), *t["ratios"].values()] for t in totals]
    print(C.markdown_table(headers, table))
    C.write_json(args.json, "kn_layer", env, args, {"layers": results, "encoder_totals": totals})


if __name__ == "__main__":
    main()
