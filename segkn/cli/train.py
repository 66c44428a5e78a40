"""``segkn train``: train from a YAML config, or resume a run, and say where the run went."""

from __future__ import annotations

import argparse
from pathlib import Path

from segkn.cli.common import add_no_progress, is_rank0

HELP = "train a model from a YAML config, or resume a run"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "config", nargs="?", help="YAML recipe (optional with --resume: the run's config.yaml)"
    )
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override config values, e.g. --set train.lr=0.02 data.num_workers=0",
    )  # fmt: skip
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pth")
    parser.add_argument("--init", metavar="CHECKPOINT", help="start the weights from a segkn checkpoint")
    parser.add_argument(
        "--run-dir", metavar="DIR", help="output directory (default: <run_dir>/<name> of the config)"
    )
    parser.add_argument(
        "--stop-at", type=int, metavar="N",
        help="stop with a checkpoint after N iterations (the schedule still spans train.iterations)",
    )  # fmt: skip
    add_no_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train from a config (or resume a run) and print where the run went."""
    from segkn.config import ConfigError, load_config
    from segkn.engine.trainer import train

    if args.config is None and args.resume is None:
        raise ConfigError("train: give a CONFIG file, or --resume RUN_DIR")
    if args.resume and args.run_dir and Path(args.resume).resolve() != Path(args.run_dir).resolve():
        raise ConfigError("train: --resume RUN_DIR already names the run directory; drop --run-dir")
    if args.resume and not Path(args.resume).is_dir():
        raise FileNotFoundError(f"{args.resume}: run directory not found")
    config = args.config or Path(args.resume) / "config.yaml"
    cfg = load_config(config, args.overrides)
    summary = train(
        cfg,
        run_dir=args.resume or args.run_dir,
        resume=bool(args.resume),
        init=args.init,
        stop_at=args.stop_at,
        progress=not args.no_progress,
    )
    if is_rank0():
        best = summary["best"]
        best_text = (
            f"best val mIoU {100 * best['miou']:.2f} at iteration {best['step']}" if best else "no validation"
        )
        print(f"trained {summary['step']} iterations into {summary['run_dir']}; {best_text}")
    return 0
