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


def _size(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) as a pair of positive ints, for argparse."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size HxW such as 512x1024, got {text!r}")
    return parts[0], parts[1]


def _infer_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files (PNG/JPEG/BMP/TIFF), folders (searched recursively) or glob patterns",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--checkpoint", metavar="FILE", help="segkn checkpoint (torch backend)")
    parser.add_argument("--onnx", metavar="FILE", help="exported ONNX model (onnxruntime backend)")
    parser.add_argument(
        "--backend", choices=("torch", "onnxruntime"),
        help="run the checkpoint in PyTorch or the ONNX file in ONNX Runtime (default: whichever is given)",
    )  # fmt: skip
    parser.add_argument(
        "--save", nargs="+", choices=("label", "color", "overlay"), default=["label", "color", "overlay"],
        help="outputs to write, each into DIR/<output>/ (default: all three)",
    )  # fmt: skip
    parser.add_argument(
        "--ids", choices=("train", "dataset"), default="train",
        help="label map values: train ids (class indices), or the dataset's own ids such as Cityscapes "
        "labelIds (default: train)",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=("whole", "slide"), help="whole image or sliding window (default: eval.mode)"
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sliding window size (default: eval.crop_size)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sliding window step (default: 2/3 of the window)",
    )
    parser.add_argument(
        "--scales", type=float, nargs="+", metavar="S", help="multi-scale TTA, e.g. 0.75 1 1.25"
    )
    parser.add_argument(
        "--flip", action="store_true", default=None, help="add horizontally flipped copies (TTA)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images of one size run together (default: 1)"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if present)"
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the model (torch backend): pays off over many images; each new image size "
        "waits for compiling at first (minutes on a CPU) until sizes share one dynamic graph",
    )  # fmt: skip
    parser.add_argument(
        "--channels-last", action="store_true", default=None,
        help="model and inputs in channels_last memory format (torch backend; default: eval.channels_last)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the colour mask (default: 0.5)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def infer_command(args: argparse.Namespace) -> int:
    """Segment images with a checkpoint (PyTorch) or an ONNX file (ONNX Runtime); write outputs, summarize."""
    from segkn.inference import Segmenter
    from segkn.inference.batch import collect_images, segment_files

    backend = args.backend or ("onnxruntime" if args.onnx and not args.checkpoint else "torch")
    options = {
        "mode": args.mode, "crop_size": args.crop_size, "stride": args.stride, "scales": args.scales,
        "flip": args.flip, "compile": args.compile, "channels_last": args.channels_last,
    }  # fmt: skip
    if backend == "torch":
        if not args.checkpoint:
            raise ValueError("infer: the torch backend needs --checkpoint FILE (or give --onnx FILE)")
        segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device, **options)
    else:
        if not args.onnx:
            raise ValueError("infer: --backend onnxruntime needs --onnx FILE (export one with segkn export)")
        segmenter = Segmenter.from_onnx(args.onnx, device=args.device, **options)
    out = Path(args.out)
    pairs = collect_images(args.inputs, exclude=out)
    print(f"{len(pairs)} image(s); {segmenter!r}; backend {backend}", file=sys.stderr)
    summary = segment_files(
        segmenter, pairs, out, args.save, args.ids, args.batch_size, args.alpha, not args.no_progress
    )
    print(summary.text())
    print(f"outputs: {', '.join(str(out / kind) for kind in args.save)}")
    return 1 if summary.failed else 0


def _export_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default: 18)")
    parser.add_argument("--fp16", action="store_true", help="export in float16 (verified with looser bounds)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check after export")
    parser.add_argument(
        "--verify-sizes", type=_size, nargs="+", metavar="HxW",
        help="input sizes to verify at (default: the sample, one not a multiple of 32, one larger)",
    )  # fmt: skip
    parser.add_argument("--atol", type=float, help="max abs logit difference allowed (default: 1e-3)")
    parser.add_argument(
        "--min-agreement", type=float, help="least share of pixels with the same argmax (default: 0.999)"
    )
    return parser


def export_command(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and verify it in ONNX Runtime; exit 1 when verification fails."""
    from segkn.inference.export import export_checkpoint, verify_checkpoint

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
        print(
            f"error: {path} does not match the PyTorch model within the bounds above; the file is kept for "
            "inspection, do not deploy it",
            file=sys.stderr,
        )
        return 1
    sizes = ", ".join(f"{h}x{w}" for h, w in report.sizes)
    print(f"verified: ONNX Runtime matches PyTorch on {len(report.records)} images at sizes {sizes}")
    return 0


def _publish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoint", help="training checkpoint (e.g. runs/<name>/best.pth)")
    parser.add_argument("out", help="release file to write")
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    return parser


def publish_command(args: argparse.Namespace) -> int:
    """Strip a training checkpoint to a release file and print its size and sha256."""
    from segkn.engine.checkpoint import file_sha256, publish_checkpoint

    payload = publish_checkpoint(args.checkpoint, args.out, fp16=args.fp16)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.2f} MiB, step {payload.get('step')})")
    print(f"sha256 {file_sha256(args.out)}")
    return 0


def _shapes_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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


def shapes_command(args: argparse.Namespace) -> int:
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
    _infer_parser(sub.add_parser("infer", help="segment images: label maps, colour masks, overlays"))
    _export_parser(sub.add_parser("export", help="export a checkpoint to ONNX, verified in ONNX Runtime"))
    _publish_parser(sub.add_parser("publish", help="strip a training checkpoint to a release file"))
    _shapes_parser(sub.add_parser("shapes", help="write synthetic shapes scenes to disk (demo images)"))
    args = parser.parse_args(argv)
    quiet = args.command == "zoo" or not _is_rank0()
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    # segkn's own messages at `level`; other libraries' (the ONNX exporter's, ...) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("segkn").setLevel(level)
    commands = {
        "zoo": zoo, "train": train_command, "eval": eval_command, "infer": infer_command,
        "export": export_command, "publish": publish_command, "shapes": shapes_command,
    }  # fmt: skip
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
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; a SIGTERM that stopped training (after saving): 143
        print(str(exc) or "interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
