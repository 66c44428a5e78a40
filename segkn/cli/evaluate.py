"""``segkn eval``: score a run's best checkpoint (or a config with --checkpoint) and print the table."""

from __future__ import annotations

import argparse
from pathlib import Path

from segkn.cli.common import add_no_progress, is_rank0

HELP = "evaluate a checkpoint: mIoU and per-class IoU/Acc"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("target", help="a run directory (uses its config.yaml and best.pth) or a YAML config")
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="checkpoint to evaluate (required with a config)"
    )
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override config values, e.g. --set eval.mode=slide eval.flip=true",
    )  # fmt: skip
    parser.add_argument("--split", help="dataset split (default: data.val_split)")
    parser.add_argument(
        "--out", metavar="DIR", help="where eval_<split>.json/.txt go (default: the run directory)"
    )
    parser.add_argument(
        "--cityscapes-submission",
        metavar="DIR",
        help="instead of scoring, write full-resolution labelIds PNGs of the split (e.g. test) into DIR",
    )
    add_no_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate a run directory's best checkpoint, or a config with --checkpoint; print the table."""
    from segkn.config import ConfigError, load_config
    from segkn.engine.evaluator import evaluate_checkpoint

    target = Path(args.target)
    if target.is_dir():
        cfg = load_config(target / "config.yaml", args.overrides)
        checkpoint = Path(args.checkpoint) if args.checkpoint else target / "best.pth"
        if not args.checkpoint and not checkpoint.is_file() and (target / "last.pth").is_file():
            checkpoint = target / "last.pth"  # a run stopped before its first validation
        out = Path(args.out) if args.out else target
    else:
        cfg = load_config(target, args.overrides)
        if not args.checkpoint:
            raise ConfigError(f"eval: --checkpoint FILE is required with a config file ({target})")
        checkpoint = Path(args.checkpoint)
        out = Path(args.out) if args.out else checkpoint.parent
    if args.cityscapes_submission:
        from segkn.engine.submission import submission_from_checkpoint

        written = submission_from_checkpoint(
            cfg, checkpoint, args.split or cfg.data.val_split, args.cityscapes_submission
        )
        print(f"wrote {len(written)} labelIds PNGs to {args.cityscapes_submission}")
        return 0
    report, table = evaluate_checkpoint(
        cfg, checkpoint, split=args.split, out_dir=out, progress=not args.no_progress
    )
    if is_rank0():
        print(f"{checkpoint} on {cfg.data.type} {report['split']} ({report['mode']}):")
        print(table)
        print(f"report: {out / ('eval_' + report['split'] + '.json')}")
    return 0
