"""The ``segkn`` command: its argument parser, logging set-up, and the errors it reports in one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from segkn.cli import evaluate, export, infer, plot, publish, shapes, train, zoo
from segkn.cli.common import is_rank0
from segkn.engine.plots import MissingExtra

__all__ = ["COMMANDS", "build_parser", "main"]

# subcommand -> its module (HELP, add_arguments(parser), run(args) -> exit status), in --help order
COMMANDS: dict[str, ModuleType] = {
    "zoo": zoo,
    "train": train,
    "eval": evaluate,
    "infer": infer,
    "plot": plot,
    "export": export,
    "publish": publish,
    "shapes": shapes,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``segkn`` argument parser with one subcommand per entry of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="segkn", description="Semantic segmentation with Kernel Normalization"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segkn <command> ...``; return the exit status (2 for an error the user can fix)."""
    args = build_parser().parse_args(argv)
    quiet = args.command == "zoo" or not is_rank0()
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    # segkn's own messages at `level`; other libraries' (the ONNX exporter's, ...) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("segkn").setLevel(level)
    try:
        return COMMANDS[args.command].run(args)
    # ConfigError, DatasetError, CheckpointError and OnnxError are ValueErrors; MissingExtra: pip install
    except (ValueError, FileNotFoundError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from segkn.engine.trainer import TrainingDiverged

        if not isinstance(exc, TrainingDiverged):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; a SIGTERM that stopped training (after saving): 143
        print(str(exc) or "interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
