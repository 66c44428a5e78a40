"""Inference in ONNX Runtime: KN models against their plain-conv network, ResNet-50 kn against bn (folded).

    .venv/bin/python benchmarks/kn_onnx.py                          # batch 1 x 3 x 512 x 1024
    .venv/bin/python benchmarks/kn_onnx.py --cases c --size 1024 2048 --threads 4

Cases (19 classes, output stride 16, untrained weights):
  a  DeepLabV3 and U-Net on KNResNet-18 and DeepLabV3 on ResNet-50 (norm kn), each against the same
     model object exported with plain convolutions (``_common.plain_convs``: every KN conv is its
     convolution alone);
  c  DeepLabV3 on ResNet-50 norm kn against norm bn, BatchNorm folded into the convolutions as a
     deployment has it: the script checks that no BatchNormalization node is left in the graph that
     ONNX Runtime runs (torch's exporter folds it already).
Every model is exported with segkn's ``export_onnx`` (dynamo exporter, opset 18, dynamic batch and
size; the export time is reported apart) and run by one InferenceSession with all graph optimizations,
``--threads`` intra-op threads. The sessions of a case run in the same rounds, one image batch per
call; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as C
import numpy as np
import torch

NUM_CLASSES = 19


def model_cfg(name: str, output_stride: int) -> dict[str, Any]:
    """``arch/encoder-norm`` (e.g. ``deeplabv3/resnet50-bn``) as a ``build_model`` mapping."""
    arch, encoder = name.split("/")
    encoder, _, norm = encoder.partition("-")
    norm = norm or "kn"
    return dict(arch=arch, encoder=encoder, norm=norm, num_classes=NUM_CLASSES, output_stride=output_stride)


def cases(names: list[str]) -> list[tuple[str, str, str]]:
    """(case, model, baseline) for the named cases; a baseline ``X +plain`` is X with plain convs."""
    out = []
    if "a" in names:
        for model in ("deeplabv3/knresnet18", "unet/knresnet18", "deeplabv3/resnet50-kn"):
            out.append(("a KN/plain", model, f"{model} +plain"))
    if "c" in names:
        out.append(("c kn/bn-folded", "deeplabv3/resnet50-kn", "deeplabv3/resnet50-bn"))
    return out


def export(name: str, folder: Path, output_stride: int, sample: tuple[int, int]) -> tuple[Path, float]:
    """Export one model (built on CPU, seed 0) and return its file and the export time in seconds."""
    from segkn.inference.export import export_onnx
    from segkn.models import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg(name.removesuffix(" +plain"), output_stride))
    path = folder / (name.replace("/", "_").replace(" +", "_") + ".onnx")
    plain = C.plain_convs(model) if name.endswith(" +plain") else contextlib.nullcontext()
    start = time.perf_counter()
    with plain:
        export_onnx(model, path, sample_size=sample)
    return path, time.perf_counter() - start


def session(path: Path, threads: int, providers: list[str]) -> tuple[Any, Counter[str]]:
    """An InferenceSession with every graph optimization, and the op counts of the graph it runs."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the warning that the saved optimized graph is hardware specific
    optimized = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), options, providers=providers)
    ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return sess, ops


def main() -> None:
    import onnx
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(parser, "kn_onnx", repeats=5)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cases", nargs="+", choices="ac", default=list("ac"))
    parser.add_argument("--only", default="", help="keep the pairs whose first model's name contains this")
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--export-size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    args = parser.parse_args()
    device = C.setup(args)
    threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit("--device cuda: this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")

    pairs = [p for p in cases(args.cases) if args.only in p[1]]
    versions = dict(onnx=onnx.__version__, onnxruntime=ort.__version__, providers=providers)
    shapes = dict(input=[args.batch, 3, *args.size], export_sample=args.export_size)
    env = C.environment(device, **shapes, output_stride=args.output_stride, ort_threads=threads, **versions)
    C.print_header("kn_onnx: ONNX Runtime inference, KN against plain convs and BN folded", env)
    x = np.random.default_rng(0).random((args.batch, 3, *args.size), dtype=np.float32)

    models: dict[str, dict[str, Any]] = {}
    ratios: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in C.linked_groups([(a, b) for _, a, b in pairs]):
            sessions = {}
            for name in group:
                path, export_s = export(name, Path(tmp), args.output_stride, tuple(args.export_size))
                sessions[name], ops = session(path, threads, providers)
                exported = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
                models[name] = {
                    "model": name,
                    "export_s": export_s,
                    "file_mb": path.stat().st_size / 1e6,
                    "nodes": sum(ops.values()),
                    "batchnorm_exported": exported["BatchNormalization"],
                    "batchnorm_after_ort": ops["BatchNormalization"],
                }
                print(f"exported {name} in {export_s:.1f} s", flush=True)
            calls = {name: (lambda s=s: s.run(None, {"image": x})) for name, s in sessions.items()}
            times = C.interleaved(calls, args.repeats, args.warmup, device)
            for name in group:
                models[name]["median_ms"] = 1000 * C.median(times[name])
                models[name]["times_ms"] = [1000 * t for t in times[name]]
            for case, a, b in pairs:
                if a in group:
                    ratio = C.round_ratio(times, a, b)
                    ratios.append({"case": case, "model": a, "baseline": b, "time": ratio})
            del sessions, calls

    print("\n## per model\n")
    keys = ["median_ms", "export_s", "file_mb", "nodes", "batchnorm_exported", "batchnorm_after_ort"]
    headers = ["model", "median ms", "export s", "MB", "nodes run", "BN exported", "BN left after ORT"]
    print(C.markdown_table(headers, [[m["model"], *(m[k] for k in keys)] for m in models.values()]))
    print("\n## ratios (median of per-round ratios)\n")
    table = [[r["case"], r["model"], r["baseline"], r["time"]] for r in ratios]
    print(C.markdown_table(["case", "model", "against", "time x"], table))
    left = [m["model"] for m in models.values() if m["batchnorm_after_ort"]]
    if left:
        print(f"\nWARNING: BatchNormalization nodes left after ONNX Runtime's optimizations in {left}")
    C.write_json(args.json, "kn_onnx", env, args, {"models": list(models.values()), "ratios": ratios})


if __name__ == "__main__":
    main()
