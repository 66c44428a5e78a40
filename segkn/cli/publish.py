"""``segkn publish``: strip a training checkpoint to a release file; print its size and sha256."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "strip a training checkpoint to a release file"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoint", help="training checkpoint (e.g. runs/<name>/best.pth)")
    parser.add_argument("out", help="release file to write")
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    return parser


def run(args: argparse.Namespace) -> int:
    """Strip a training checkpoint to a release file and print its size and sha256."""
    from segkn.engine.checkpoint import file_sha256, publish_checkpoint

    payload = publish_checkpoint(args.checkpoint, args.out, fp16=args.fp16)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.2f} MiB, step {payload.get('step')})")
    print(f"sha256 {file_sha256(args.out)}")
    return 0
