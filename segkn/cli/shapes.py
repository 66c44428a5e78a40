"""``segkn shapes``: write synthetic shapes scenes to disk as a folder dataset (demo images)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write synthetic shapes scenes to disk (demo images)"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("out", help="folder to write images/<split>/, masks/<split>/ and classes.yaml into")
    parser.add_argument("--split", default="test", help="split name; test scenes are unseen by the demo")
    parser.add_argument("--count", type=int, default=8, help="number of scenes (default: 8)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="image size (default: 64 64)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=3, help="background + shape kinds, 2..7 (default: 3, as the demo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Write synthetic shapes scenes to disk as a folder dataset (inputs for infer, or data.type folder)."""
    from segkn.data.shapes import write_shapes_folder

    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    images = write_shapes_folder(
        args.out, args.split, args.count, tuple(args.size), args.num_classes, args.seed
    )
    print(
        f"wrote {len(images)} images to {Path(args.out) / 'images' / args.split}, their label maps to "
        f"{Path(args.out) / 'masks' / args.split} and {Path(args.out) / 'classes.yaml'}"
    )
    return 0
