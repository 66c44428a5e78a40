"""``segkn zoo``: parameter counts of every architecture x encoder, and one forward pass on an image."""

from __future__ import annotations

import argparse
import time

import torch

from segkn.models.factory import ARCHS, ENCODERS, build_model, count_parameters
from segkn.models.registry import default_norm

HELP = "model-zoo demo: build models, run one on an image, print shapes"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
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


def _image(path: str | None) -> torch.Tensor:
    """The image at ``path``, or a generated 512x1024 test image, as a float 3 x H x W tensor in [0, 1]."""
    from segkn.data.io import read_image
    from segkn.data.transforms import image_to_tensor
    from segkn.inference.verify import verification_image

    return image_to_tensor(read_image(path) if path else verification_image(512, 1024))


def _table(num_classes: int) -> None:
    print(f"{'arch':<15}{'encoder':<12}{'encoder params':>16}{'total params':>15}")
    for arch in ARCHS:
        for encoder in ENCODERS:
            norm = default_norm(encoder)
            model = build_model({"arch": arch, "encoder": encoder, "norm": norm, "num_classes": num_classes})
            print(
                f"{arch:<15}{encoder + '/' + norm:<12}{count_parameters(model.encoder):>16,}"
                f"{count_parameters(model):>15,}"
            )
    print()


def run(args: argparse.Namespace) -> int:
    """Model-zoo demo: parameter counts of every architecture x encoder, and one forward pass."""
    from segkn.engine.device import resolve_device

    if not args.no_table:
        _table(args.num_classes)
    device = resolve_device(args.device)
    norm = default_norm(args.encoder)
    cfg = {
        "arch": args.arch,
        "encoder": args.encoder,
        "norm": norm,
        "num_classes": args.num_classes,
        "output_stride": args.output_stride,
    }
    model = build_model(cfg).to(device).eval()
    x = _image(args.image).unsqueeze(0).to(device)
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
