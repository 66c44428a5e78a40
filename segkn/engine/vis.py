"""Validation pictures: a fixed set of validation images drawn as image | ground truth | prediction panels.

At every validation the main process predicts the same ``eval.vis_samples`` images (evenly spaced over
the split, the first included) with the validation's prediction settings and writes each panel to
TensorBoard (tag ``val_vis/<name>``, the sample's name) and to ``<run>/vis/<step>/<name>.png``. The
thirds are the image (de-normalized back to RGB), the ground truth and the prediction, both in the
dataset's palette (ignored pixels: `segkn.data.palette.ignore_colour`), all at the label's size: the
size the metrics are computed at. A panel whose third would be over ``MAX_SIDE`` pixels long is
shrunk for the picture.

The images are predicted again rather than taken from the validation's own pass: that pass is split
over the processes and batched, while these few images are wanted whole on the main process.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from segkn.config import Config
from segkn.data.io import write_png
from segkn.data.palette import colorize
from segkn.data.transforms import resolve_normalize
from segkn.engine import distributed
from segkn.engine.acceleration import logged_compile, to_channels_last
from segkn.engine.evaluator import prediction_settings
from segkn.models.prediction import predict

__all__ = ["MAX_SIDE", "VIS_DIR", "ValidationPanels", "denormalize", "panel", "vis_indices"]

VIS_DIR = "vis"
MAX_SIDE = 1024  # the longest side of one third of a panel; larger ones are shrunk (Cityscapes: 512x1024)


def vis_indices(length: int, count: int) -> list[int]:
    """``count`` sample indices evenly spaced over a split of ``length`` (all of them if fewer), from 0."""
    count = min(count, length)
    return [i * length // count for i in range(count)]


def denormalize(image: Tensor, normalize: Any) -> np.ndarray:
    """A 3 x H x W float tensor of the evaluation transform back to H x W x 3 uint8 RGB."""
    pixels = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    stats = resolve_normalize(normalize)
    if stats is not None:
        mean, std = stats
        pixels = pixels * std + mean
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def panel(
    image: np.ndarray, mask: np.ndarray, prediction: np.ndarray, palette: Sequence[Sequence[int]]
) -> np.ndarray:
    """``image | ground truth | prediction`` side by side (H x 3W x 3 uint8) at the label's size H x W.

    An image of another size (resized by ``data.eval_resize``) is resized to the label's; a third longer
    than ``MAX_SIDE`` is shrunk (area for the image, nearest for the labels).
    """
    assert mask.shape == prediction.shape, "the prediction is made at the label's size"
    h, w = mask.shape
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    thirds = [image, colorize(mask, palette), colorize(prediction, palette)]
    factor = MAX_SIDE / max(h, w)
    if factor < 1:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        kinds = (cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_NEAREST)
        thirds = [cv2.resize(t, size, interpolation=k) for t, k in zip(thirds, kinds, strict=True)]
    return np.concatenate(thirds, axis=1)


def _file_name(name: str) -> str:
    """A sample name as a file name: path separators and unusual characters become '_'."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "sample"


class ValidationPanels:
    """The panels of one run: which samples (fixed when the run starts) and how to predict them.

    ``dataset`` is the validation split with its evaluation transform (a `SegmentationDataset`);
    ``settings`` are `segkn.engine.evaluator.prediction_settings`, ``normalize`` the evaluation
    transform's (``data.normalize``); ``count`` 0 writes nothing.
    """

    def __init__(
        self,
        dataset: Any,
        count: int,
        palette: Sequence[Sequence[int]],
        normalize: Any,
        settings: Mapping[str, Any],
        run_dir: Path,
    ) -> None:
        self.dataset, self.palette, self.normalize = dataset, palette, normalize
        self.settings, self.run_dir = dict(settings), Path(run_dir)
        self.indices = vis_indices(len(dataset), count)
        names = [_file_name(dataset.name(i)) for i in self.indices]  # unique in a split, as file names
        unique = len(set(names)) == len(names)
        self.names = names if unique else [f"{i}_{n}" for i, n in zip(self.indices, names, strict=True)]

    @classmethod
    def for_run(
        cls, cfg: Config, dataset: Any, palette: Sequence[Sequence[int]], run_dir: Path
    ) -> ValidationPanels:
        """The panels of a run with config ``cfg``: ``eval.vis_samples`` images, predicted as it validates."""
        settings = prediction_settings(cfg)
        return cls(dataset, cfg.eval.vis_samples, palette, cfg.data.normalize, settings, run_dir)

    @torch.no_grad()
    def draw(
        self,
        model: nn.Module,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> list[np.ndarray]:
        """The panels of the current ``model`` (run without its DDP wrapper, in eval mode), in order."""
        net = distributed.unwrap(model)
        was_training = net.training
        net.eval()
        panels = []
        try:
            for index in self.indices:
                image, mask = self.dataset[index]
                x = image[None].to(device)
                x = to_channels_last(x) if channels_last else x
                autocast = (
                    torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                )
                with autocast, logged_compile("drawing the validation pictures"):
                    probs = predict(net, x, **self.settings, out_size=mask.shape[-2:])
                prediction = probs.argmax(1)[0].cpu().numpy()
                panels.append(
                    panel(denormalize(image, self.normalize), mask.numpy(), prediction, self.palette)
                )
        finally:
            net.train(was_training)
        return panels

    def write(
        self,
        model: nn.Module,
        step: int,
        writer: Any,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> list[Path]:
        """Draw the panels and write them to TensorBoard (``writer``) and ``vis/<step>/`` (atomically)."""
        if not self.indices:
            return []
        paths = []
        for name, picture in zip(self.names, self.draw(model, device, amp_dtype, channels_last), strict=True):
            path = self.run_dir / VIS_DIR / str(step) / f"{name}.png"
            write_png(path, picture)
            writer.add_image(f"val_vis/{name}", picture, step, dataformats="HWC")
            paths.append(path)
        writer.flush()
        return paths
