"""The training data pipeline at Cityscapes size: PNG decode + augmentation, samples/s per worker.

    .venv/bin/python benchmarks/data_pipeline.py
    .venv/bin/python benchmarks/data_pipeline.py --workers 0 1 2 4 --samples 32 --config RECIPE.yaml

Writes --images synthetic 2048 x 1024 scenes in the Cityscapes layout (``leftImg8bit/train/<city>/
*_leftImg8bit.png`` and ``gtFine/train/<city>/*_gtFine_labelIds.png``) to a temporary folder: smooth
colour fields with pixel noise, which compress to about the size of real Cityscapes PNGs (the mean
file size is printed), and label maps of Cityscapes label ids in blocks. The files sit in the page
cache, so this measures decoding, not the disk. The recipe's dataset and training transforms
(--config, default the Cityscapes DeepLabV3 KNResNet-18 recipe: random scale 0.5-2, pad, 512 x 1024
crop with cat_max_ratio, flip, photometric jitter) are built by segkn itself (``build_split`` and
``build_train_loader``, the trainer's loader).

Rows, timed in interleaved rounds of --samples samples each: ``decode`` (image + mask read and
mapped to train ids), ``augment`` (the transform alone, on decoded arrays) and ``decode+augment``
(one dataset item) in this process; then the trainer's DataLoader with each of --workers worker
processes (batches of the recipe's batch size; the batches a loader had prefetched while another
row ran are taken before its clock starts). samples/s per worker divides by max(1, workers).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as C
import cv2
import numpy as np
import torch

RECIPE = C.ROOT / "configs" / "cityscapes" / "deeplabv3_knresnet18_kn_80k_512x1024.yaml"
LABEL_IDS = np.array([0, 1, 4, 7, 8, 11, 12, 13, 17, 19, 20, 21, 23, 24, 26, 27, 28, 31, 32, 33], np.uint8)
SIZE = (1024, 2048)  # H, W of a Cityscapes image


def write_scenes(root: Path, count: int, seed: int = 0) -> float:
    """Write ``count`` image/labelIds pairs in the Cityscapes layout; returns the mean image file MB."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    sizes = []
    for i in range(count):
        city = ("aachen", "bochum")[i % 2]
        stem = f"{city}_{i:06d}_000019"
        coarse = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        image = np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)
        labels = cv2.resize(rng.choice(LABEL_IDS, (32, 64)), (w, h), interpolation=cv2.INTER_NEAREST)
        image_path = root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"
        mask_path = root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"
        for path, array in ((image_path, image[:, :, ::-1]), (mask_path, labels)):
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), np.ascontiguousarray(array)), path
        sizes.append(image_path.stat().st_size / 1e6)
    return float(np.mean(sizes))


def loader_calls(
    batches: Iterator[Any], workers: int, batch_size: int, samples: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(take ``samples`` samples, take the batches prefetched while other rows ran) of one loader."""

    def take() -> None:
        for _ in range(-(-samples // batch_size)):
            next(batches)

    def drain() -> None:
        for _ in range(2 * workers):  # DataLoader's prefetch_factor (2) per worker
            next(batches)

    return take, drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(parser, "data_pipeline", repeats=5)
    parser.add_argument("--config", type=Path, default=RECIPE, help="recipe whose data pipeline is timed")
    parser.add_argument("--images", type=int, default=4, help="synthetic 2048 x 1024 images written")
    parser.add_argument("--samples", type=int, default=16, help="samples per row per round")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers")
    args = parser.parse_args()
    device = C.setup(args)
    if device.type != "cpu":
        parser.error("the data pipeline runs on the CPU; leave --device out")

    from segkn.config import load_config
    from segkn.engine.loaders import build_split, build_train_loader, train_batches

    with tempfile.TemporaryDirectory() as tmp:
        mb = write_scenes(Path(tmp), args.images)
        cfg = load_config(args.config, [f"data.root={tmp}", "model.encoder_weights=null"])
        dataset = build_split(cfg, cfg.data.train_split, train=True)
        batch = cfg.train.batch_size
        shapes = dict(image=[*SIZE, 3], image_png_mb=round(mb, 2), crop=list(cfg.data.crop_size), batch=batch)
        transform = " ".join(repr(dataset.transform).split())
        pipeline = dict(recipe=C.shown(args.config), transform=transform)
        env = C.environment(device, torch.uint8, **shapes, cv2_threads=cv2.getNumThreads(), **pipeline)
        C.print_header("data_pipeline: Cityscapes-size decode + augment", env)

        decoded = [dataset.load(i) for i in range(len(dataset))]
        index = iter(range(10**9))

        def repeat(fn: Callable[[int], object]) -> Callable[[], None]:
            return lambda: [fn(next(index) % len(dataset)) for _ in range(args.samples)]  # type: ignore[func-returns-value]

        calls: dict[str, Callable[[], object]] = {
            "decode": repeat(dataset.load),
            "augment": repeat(lambda i: dataset.transform(*decoded[i])),
            "decode+augment": repeat(dataset.__getitem__),
        }
        workers = dict.fromkeys(calls, 0)
        drains: dict[str, Callable[[], object]] = {}
        for n in args.workers:
            loader = build_train_loader(dataset, batch, seed=cfg.seed, num_workers=n)
            name = f"DataLoader num_workers={n}"
            calls[name], drains[name] = loader_calls(train_batches(loader), n, batch, args.samples)
            workers[name] = n
        times = C.interleaved(calls, args.repeats, args.warmup, device, prepare=drains)

    rows = []
    for name, values in times.items():
        per_s = args.samples / C.median(values)
        rows.append(
            {
                "row": name,
                "workers": workers[name],
                "samples_per_s": per_s,
                "samples_per_s_per_worker": per_s / max(1, workers[name]),
                "ms_per_sample": 1000 / per_s,
                "times_s": values,
            }
        )
    keys = ["row", "workers", "samples_per_s", "samples_per_s_per_worker", "ms_per_sample"]
    headers = ["row", "workers", "samples/s", "samples/s per worker", "ms / sample"]
    print(C.markdown_table(headers, [[r[k] for k in keys] for r in rows]))
    C.write_json(args.json, "data_pipeline", env, args, rows)


if __name__ == "__main__":
    main()
