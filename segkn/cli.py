"""Command-line entry points: the ``segkn`` console script and the thin scripts in tools/."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from segkn.models.factory import ARCHS, ENCODERS, build_model, count_parameters


def _zoo_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--arch", default="deeplabv3", choices=ARCHS, help="architecture to run (default: %(default)s)"
    )
    parser.add_argument(
        "--encoder", default="knresnet18", choices=ENCODERS, help="encoder (default: %(default)s)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=19, help="classes of the head (default: 19, Cityscapes)"
    )
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--image", help="an image to run on (default: a generated 512x1024 test image)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--no-table", action="store_true", help="skip the parameter table of the whole zoo")
    return parser


def _device(word: str) -> torch.device:
    if word == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(word)


def _test_image(height: int = 512, width: int = 1024) -> torch.Tensor:
    """A deterministic RGB test image in [0, 1]: gradients and a few discs."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.stack([xs, ys, 1 - xs * ys])
    for cy, cx, r in ((0.3, 0.2, 0.12), (0.6, 0.55, 0.2), (0.4, 0.85, 0.1)):
        disc = ((ys - cy) ** 2 + ((xs - cx) * width / height) ** 2) < r**2
        image[:, disc] = torch.tensor([1.0, 0.8, 0.1]).view(3, 1)
    return image


def _read_image(path: str) -> torch.Tensor:
    from segkn.data.io import read_image

    return torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255.0


def zoo(args: argparse.Namespace) -> int:
    """Model-zoo demo: parameter counts of every architecture x encoder, and one forward pass."""
    if not args.no_table:
        print(f"{'arch':<15}{'encoder':<12}{'encoder params':>16}{'total params':>15}")
        for arch in ARCHS:
            for encoder in ENCODERS:
                norm = "kn" if encoder.startswith("knresnet") else "bn"
                model = build_model(
                    {"arch": arch, "encoder": encoder, "norm": norm, "num_classes": args.num_classes}
                )
                print(
                    f"{arch:<15}{encoder + '/' + norm:<12}{count_parameters(model.encoder):>16,}"
                    f"{count_parameters(model):>15,}"
                )
        print()
    device = _device(args.device)
    norm = "kn" if args.encoder.startswith("knresnet") else "bn"
    cfg = {
        "arch": args.arch,
        "encoder": args.encoder,
        "norm": norm,
        "num_classes": args.num_classes,
        "output_stride": args.output_stride,
    }
    model = build_model(cfg).to(device).eval()
    image = _read_image(args.image) if args.image else _test_image()
    x = image.unsqueeze(0).to(device)
    with torch.inference_mode():
        start = time.perf_counter()
        features = model.encoder(x)
        logits = model(x)
        seconds = time.perf_counter() - start
    print(
        f"model: {args.arch} / {args.encoder} (norm {norm}), "
        f"{count_parameters(model):,} parameters, on {device}"
    )
    print(f"input: {tuple(x.shape)}" + (f" from {args.image}" if args.image else " (generated test image)"))
    for i, f in enumerate(features):
        print(f"  encoder feature at stride {2**i:>2}: {tuple(f.shape)}")
    print(f"logits: {tuple(logits.shape)}; label map: {tuple(logits.argmax(1).shape)}")
    print(f"encoder + full forward pass took {seconds:.2f} s")
    return 0


def _train_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    return parser


def _eval_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    return parser


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def train_command(args: argparse.Namespace) -> int:
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
    )
    if _is_rank0():
        best = summary["best"]
        best_text = (
            f"best val mIoU {100 * best['miou']:.2f} at iteration {best['step']}" if best else "no validation"
        )
        print(f"trained {summary['step']} iterations into {summary['run_dir']}; {best_text}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
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
    report, table = evaluate_checkpoint(cfg, checkpoint, split=args.split, out_dir=out)
    if _is_rank0():
        print(f"{checkpoint} on {cfg.data.type} {report['split']} ({report['mode']}):")
        print(table)
        print(f"report: {out / ('eval_' + report['split'] + '.json')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segkn", description="Semantic segmentation with Kernel Normalization"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    _zoo_parser(sub.add_parser("zoo", help="model-zoo demo: build models, run one on an image, print shapes"))
    _train_parser(sub.add_parser("train", help="train a model from a YAML config, or resume a run"))
    _eval_parser(sub.add_parser("eval", help="evaluate a checkpoint: mIoU and per-class IoU/Acc"))
    args = parser.parse_args(argv)
    quiet = args.command == "zoo" or not _is_rank0()
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    commands = {"zoo": zoo, "train": train_command, "eval": eval_command}
    try:
        return commands[args.command](args)
    except (
        ValueError,
        FileNotFoundError,
    ) as exc:  # ConfigError, DatasetError, CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from segkn.engine.trainer import TrainingDiverged

        if not isinstance(exc, TrainingDiverged):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
