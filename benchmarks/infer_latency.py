"""Per-image CPU latency of a checkpoint in PyTorch and of its ONNX export in ONNX Runtime, side by side.

    .venv/bin/python benchmarks/infer_latency.py                       # the demo checkpoint, 512x1024
    .venv/bin/python benchmarks/infer_latency.py --checkpoint F --size 1024 2048 --threads 4

Both backends run the same ``Segmenter`` pipeline (pre-processing, whole-image inference, softmax,
argmax at the image size) on the same image, interleaved, one image per call; the table gives the
median and the spread over the repeats, and the share of pixels on which the two label maps agree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "weights" / "shapes_unet_knresnet18_kn_2k_64x64.pth"


def _scene(height: int, width: int) -> np.ndarray:
    """A shapes scene of the requested size (the demo model's kind of input)."""
    from segkn.data.shapes import ShapesDataset

    image, _ = ShapesDataset("test", (height, width), 1, num_classes=3).load(0)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEMO)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    args = parser.parse_args()

    import onnxruntime as ort

    from segkn.inference import Segmenter
    from segkn.inference.export import export_checkpoint

    torch.set_num_threads(args.threads)
    image = _scene(*args.size)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, _ = export_checkpoint(args.checkpoint, Path(tmp) / "model.onnx", verify=False)
        torch_seg = Segmenter.from_checkpoint(args.checkpoint, device="cpu")
        onnx_seg = Segmenter.from_onnx(onnx_path, device="cpu")
        session = onnx_seg.model.session
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        onnx_seg.model.session = ort.InferenceSession(
            str(onnx_path), options, providers=session.get_providers()
        )
        backends = {"PyTorch": torch_seg, "ONNX Runtime": onnx_seg}
        labels = {name: seg.predict(image) for name, seg in backends.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.repeats):
            for name, seg in backends.items():
                start = time.perf_counter()
                seg.predict(image)
                times[name].append(1000 * (time.perf_counter() - start))

    agreement = float((labels["PyTorch"] == labels["ONNX Runtime"]).mean())
    h, w = args.size
    print(f"{args.checkpoint.name}, {h}x{w} image, CPU, {args.threads} thread(s), {args.repeats} repeats")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print("| backend | median ms / image | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    ratio = statistics.median(times["PyTorch"]) / statistics.median(times["ONNX Runtime"])
    print(f"PyTorch / ONNX Runtime: {ratio:.2f}; label maps agree on {100 * agreement:.3f}% of pixels")


if __name__ == "__main__":
    main()
