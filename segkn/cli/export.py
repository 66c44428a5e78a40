"""``segkn export``: export a checkpoint to ONNX and verify it in ONNX Runtime (or verify a file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segkn.cli.common import check_output_path, size
from segkn.inference.runtime import MIN_OPSET

HELP = "export a checkpoint to ONNX, verified in ONNX Runtime"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="segkn checkpoint to export")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--out", metavar="FILE", help="ONNX file to write (then verified, unless --no-verify)"
    )
    target.add_argument(
        "--verify", metavar="FILE", help="only verify an existing export of --checkpoint against PyTorch"
    )
    parser.add_argument(
        "--sample-size", type=int, nargs=2, metavar=("H", "W"),
        help="export sample size; the graph takes any size (default: the config's data.crop_size)",
    )  # fmt: skip
    parser.add_argument(
        "--opset",
        type=int,
        default=MIN_OPSET,
        help=f"ONNX opset, {MIN_OPSET} or newer (default: %(default)s)",
    )
    parser.add_argument("--fp16", action="store_true", help="export in float16 (verified with looser bounds)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check after export")
    parser.add_argument(
        "--verify-sizes", type=size, nargs="+", metavar="HxW",
        help="input sizes to verify at (default: the sample, one not a multiple of 32, one larger)",
    )  # fmt: skip
    parser.add_argument("--atol", type=float, help="max abs logit difference allowed (default: 1e-3)")
    parser.add_argument(
        "--min-agreement", type=float, help="least share of pixels with the same argmax (default: 0.999)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and verify it in ONNX Runtime; exit 1 when verification fails."""
    from segkn.inference.export import export_checkpoint
    from segkn.inference.verify import verify_checkpoint

    if args.out:
        check_output_path(args.out, "--out", folder=False)
    bounds = {"atol": args.atol, "min_agreement": args.min_agreement}
    if args.verify:
        report = verify_checkpoint(args.checkpoint, args.verify, sizes=args.verify_sizes, **bounds)
        path = Path(args.verify)
    else:
        path, report = export_checkpoint(
            args.checkpoint, args.out, sample_size=args.sample_size, opset=args.opset, fp16=args.fp16,
            verify=not args.no_verify, verify_sizes=args.verify_sizes, **bounds,
        )  # fmt: skip
        print(f"exported {args.checkpoint} to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if report is None:
        print("not verified (--no-verify)")
        return 0
    print(report.table())
    if not report.passed:
        if args.verify:
            what, where = path, "the file is kept for inspection"
        else:  # export_checkpoint put the failed export beside --out, which keeps what it held
            kept = "keeps its earlier file" if Path(args.out).exists() else "was not written"
            what, where = "the export", f"it is in {path} for inspection; {args.out} {kept}"
        print(
            f"error: {what} does not match the PyTorch model within the bounds above; {where}; "
            "do not deploy it",
            file=sys.stderr,
        )
        return 1
    sizes = ", ".join(f"{h}x{w}" for h, w in report.sizes)
    print(f"verified: ONNX Runtime matches PyTorch on {len(report.records)} images at sizes {sizes}")
    return 0
