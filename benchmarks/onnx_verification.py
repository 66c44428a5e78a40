"""Export every arch x encoder x norm to ONNX and check it against PyTorch in ONNX Runtime (CPU).

Untrained weights (seed 0), 19 classes. Prints one markdown row per model kind: export seconds, and
over the three verification sizes (the sample, an odd size, a larger one; two images each) the worst
max |logit difference|, the lowest argmax agreement and the largest |logit| of PyTorch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_verification.py                 # all 90 kinds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_verification.py --only 'deeplabv3/knresnet*/*'
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_verification.py --fp16 --only '*/*/kn'

KNResNet encoders are KN by design: for them the norm column is the decoder's norm.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from segkn.inference.export import default_verify_sizes, export_onnx, verify_onnx
from segkn.models import build_model
from segkn.models.factory import ARCHS, ENCODERS
from segkn.nn.blocks import NORMS


def kind_config(arch: str, encoder: str, norm: str, num_classes: int, output_stride: int) -> dict:
    norms = {"norm": "kn", "decoder_norm": norm} if encoder.startswith("knresnet") else {"norm": norm}
    return {
        "arch": arch,
        "encoder": encoder,
        **norms,
        "num_classes": num_classes,
        "output_stride": output_stride,
    }


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=parse_size, default=(128, 256), help="export sample HxW (default 128x256)"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="arch/encoder/norm glob(s), e.g. 'unet/*/bn'"
    )
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument(
        "--fp16", action="store_true", help="export float16 (checked against float32 PyTorch)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    kinds = [
        k
        for k in itertools.product(ARCHS, ENCODERS, NORMS)
        if not args.only or any(fnmatch.fnmatch("/".join(k), pattern) for pattern in args.only)
    ]
    sizes = None
    print(
        f"sample {args.size[0]}x{args.size[1]}, {args.num_classes} classes, output stride "
        f"{args.output_stride}, {'float16' if args.fp16 else 'float32'}, {len(kinds)} kinds",
        flush=True,
    )
    print("\n| arch | encoder | norm | export s | max abs diff | min agreement | max abs logit | passed |")
    print("|---|---|---|---:|---:|---:|---:|---|", flush=True)
    failed = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for arch, encoder, norm in kinds:
            torch.manual_seed(0)
            model = build_model(kind_config(arch, encoder, norm, args.num_classes, args.output_stride))
            path = Path(tmp) / "model.onnx"
            t0 = time.perf_counter()
            try:
                export_onnx(model, path, sample_size=args.size, fp16=args.fp16)
            except Exception as err:  # report and go on with the other kinds
                failed += 1
                print(
                    f"| {arch} | {encoder} | {norm} | export failed: {type(err).__name__}: {err} | | | | no |"
                )
                continue
            seconds = time.perf_counter() - t0
            sizes = default_verify_sizes(args.size, model.size_divisor)
            report = verify_onnx(model, path, sizes)
            scale = max(r.logit_scale for r in report.records)
            failed += not report.passed
            print(
                f"| {arch} | {encoder} | {norm} | {seconds:.1f} | {report.max_abs_diff:.2e} | "
                f"{report.worst_agreement:.5f} | {scale:.3g} | {'yes' if report.passed else 'NO'} |",
                flush=True,
            )
    if sizes is not None:
        print(
            f"\nverification sizes {', '.join(f'{h}x{w}' for h, w in sizes)}; bounds: max abs diff <= "
            f"{report.atol:g}, agreement >= {report.min_agreement:g}"
        )
    print(f"{len(kinds) - failed}/{len(kinds)} passed in {(time.perf_counter() - start) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
