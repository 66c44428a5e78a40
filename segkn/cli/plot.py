"""``segkn plot``: a run's training curves (loss, learning rate, val mIoU) from metrics.jsonl as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "draw a run's loss, learning rate and val mIoU into a PNG (no TensorBoard needed)"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (reads its metrics.jsonl)")
    parser.add_argument("--out", metavar="FILE", help="the PNG to write (default: RUN_DIR/curves.png)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Draw RUN_DIR/metrics.jsonl into a PNG and print where it went."""
    from segkn.engine.plots import curves_png
    from segkn.engine.run_log import METRICS_FILE, read_metrics

    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / METRICS_FILE}: not found (is {run_dir} a run directory?)")
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir / METRICS_FILE}: no records yet; plot it after the first log interval")
    out = Path(args.out) if args.out else run_dir / "curves.png"
    curves_png(records, out, title=f"{run_dir.name}: training curves")
    print(f"curves: {out}")
    return 0
