"""``segkn infer``: segment images and videos with a checkpoint (PyTorch) or an ONNX file (ONNX Runtime)."""

from __future__ import annotations

import argparse
import sys

from segkn.cli.common import add_no_progress, check_output_path
from segkn.inference.memory import DEFAULT_MAX_PIXELS, MODES
from segkn.inference.video import OUTPUTS

HELP = "segment images and videos: label maps, colour masks, overlays"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files (PNG/JPEG/BMP/TIFF), video files (MP4/AVI/MOV/MKV, read through OpenCV), folders "
        "(searched recursively) or glob patterns",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--checkpoint", metavar="FILE", help="segkn checkpoint (torch backend)")
    parser.add_argument("--onnx", metavar="FILE", help="exported ONNX model (onnxruntime backend)")
    parser.add_argument(
        "--backend", choices=("torch", "onnxruntime"),
        help="run the checkpoint in PyTorch or the ONNX file in ONNX Runtime (default: whichever is given)",
    )  # fmt: skip
    parser.add_argument(
        "--save", nargs="+", choices=OUTPUTS,
        help="outputs to write, each into DIR/<output>/; a video V gets label/V/<frame index>.png (one label "
        "map per frame), color/V.mp4 and overlay/V.mp4 (videos of its size and frame rate; MJPG .avi for "
        "odd sizes) (default: all three for images, overlay for videos)",
    )  # fmt: skip
    parser.add_argument(
        "--ids", choices=("train", "dataset"), default="train",
        help="label map values: train ids (class indices), or the dataset's own ids such as Cityscapes "
        "labelIds (default: train)",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=MODES,
        help="auto: whole images up to --max-pixels when they fit in memory, sliding windows over larger "
        "ones; whole: every image whole (refused when it cannot fit); slide: windows of --crop-size "
        "(default: slide if the checkpoint's eval.mode is slide, else auto)",
    )  # fmt: skip
    parser.add_argument(
        "--max-pixels", type=int, metavar="N",
        help=f"mode auto: largest image run whole, in pixels (default: {DEFAULT_MAX_PIXELS} = 2048x2048); "
        "larger ones slide square windows of N/4 pixels",
    )  # fmt: skip
    parser.add_argument(
        "--crop-size", type=int, nargs=2, metavar=("H", "W"),
        help="sliding window size (default: eval.crop_size; in mode auto, from --max-pixels)",
    )  # fmt: skip
    parser.add_argument(
        "--stride", type=int, nargs=2, metavar=("H", "W"),
        help="sliding window step (default: 2/3 of the window)",
    )  # fmt: skip
    parser.add_argument(
        "--scales", type=float, nargs="+", metavar="S", help="multi-scale TTA, e.g. 0.75 1 1.25"
    )
    parser.add_argument(
        "--flip", action="store_true", default=None, help="add horizontally flipped copies (TTA)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1,
        help="images of one size, or frames of a video, run together (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--every", type=int, default=1, metavar="N",
        help="videos: segment every N-th frame (frames 0, N, 2N, ...); the output videos hold those frames "
        "at the input's frame rate / N, so they last as long as the input (default: 1, every frame)",
    )  # fmt: skip
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
    add_no_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Segment images and videos with a checkpoint (PyTorch) or an ONNX file (ONNX Runtime); write outputs,
    summarize."""
    from segkn.inference import Segmenter
    from segkn.inference.batch import collect_inputs, segment_files
    from segkn.inference.video import is_video

    for option, value in (("--every", args.every), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"infer: {option} takes a number of at least 1, got {value}")
    out = check_output_path(args.out, "--out", folder=True)
    for kind in args.save or OUTPUTS:
        check_output_path(out / kind, "--out", folder=True)
    backend = args.backend or ("onnxruntime" if args.onnx and not args.checkpoint else "torch")
    options = {
        "mode": args.mode, "max_pixels": args.max_pixels, "crop_size": args.crop_size,
        "stride": args.stride, "scales": args.scales, "flip": args.flip, "compile": args.compile,
        "channels_last": args.channels_last,
    }  # fmt: skip
    if backend == "torch":
        if not args.checkpoint:
            raise ValueError("infer: the torch backend needs --checkpoint FILE (or give --onnx FILE)")
        segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device, **options)
    else:
        if not args.onnx:
            raise ValueError("infer: --backend onnxruntime needs --onnx FILE (export one with segkn export)")
        segmenter = Segmenter.from_onnx(args.onnx, device=args.device, **options)
    pairs = collect_inputs(args.inputs, exclude=out)
    videos = sum(is_video(source) for source, _ in pairs)
    images = len(pairs) - videos
    counts = [f"{images} image(s)"] if images or not videos else []
    counts += [f"{videos} video(s)"] if videos else []
    print(f"{', '.join(counts)}; {segmenter!r}; backend {backend}", file=sys.stderr)
    summary = segment_files(
        segmenter, pairs, out, args.save, args.ids, args.batch_size, args.alpha, not args.no_progress,
        args.every,
    )  # fmt: skip
    print(summary.text())
    if summary.folders:  # the folders written into; none written, none made
        print(f"outputs: {', '.join(str(folder) for folder in summary.folders)}")
    return 0 if summary.complete else 1
