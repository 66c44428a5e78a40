"""The Python inference API: ``Segmenter`` turns images into label maps with a checkpoint or an ONNX file."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segkn.config import ConfigError, config_from_dict
from segkn.data.cityscapes import train_ids_to_label_ids
from segkn.data.errors import DatasetError
from segkn.data.io import read_image
from segkn.data.registry import data_settings, dataset_label_ids
from segkn.data.transforms import build_transform
from segkn.engine.acceleration import eager_unless, logged_compile, prepare_model, to_channels_last
from segkn.engine.device import amp_dtype, resolve_device
from segkn.inference.memory import (
    DEFAULT_MAX_PIXELS,
    FALLBACK_BYTES_PER_PIXEL,
    MODES,
    PROBE_SIZE,
    auto_window,
    available_bytes,
    bytes_text,
    peak_bytes_per_pixel,
    whole_image_bytes,
)
from segkn.models.prediction import predict, same_size_batches

__all__ = ["MODES", "Segmenter", "as_rgb"]

log = logging.getLogger(__name__)

Image = np.ndarray | str | Path


def as_rgb(image: Image) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from a file path or an array (grey, RGB or RGBA; alpha is dropped)."""
    if isinstance(image, str | Path):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DatasetError(f"images are uint8 arrays (0..255), got {array.dtype}; convert it first")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3])
    raise DatasetError(
        f"expected an H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) image, got {array.shape}"
    )


class Segmenter:
    """Semantic segmentation of single images or batches with a trained segkn model.

    Pre-processing is the training run's evaluation transform (its ``data`` config: normalization and
    ``eval_resize``), and inference follows its ``eval`` config (whole image or sliding window, scales,
    flip) unless overridden. Results come back at each input image's own size.

    ``mode`` is ``slide`` where the run's ``eval.mode`` says so, else ``auto``: an image (times the
    largest scale squared, times the images run together) of up to ``max_pixels`` (default
    DEFAULT_MAX_PIXELS, 2048 x 2048) runs whole when the memory estimate fits the memory available,
    a larger one slides square windows (``crop_size`` if given, else a quarter of ``max_pixels``) with
    the overlaps blended. Its windows and steps are multiples of the model's size divisor, over the
    image zero-padded as the model pads it: a window then computes what the whole image would, apart
    from a margin of its receptive field (64 pixels for the demo U-Net) where it meets another window,
    so a batch-independent (KN) model gives the whole-image labels there. ``mode="whole"`` runs every
    image whole, and refuses one whose estimate exceeds the memory available rather than running into
    the out-of-memory killer.

    ``model`` is anything that maps a float (N, 3, H, W) tensor to (N, K, H, W) logits: a segkn model,
    or an ``OnnxModel`` running an exported file in ONNX Runtime.

    A PyTorch model can be compiled (``compile=True``: torch.compile, in place; the first image of a
    new size waits for compiling, and after the second size, sizes share one dynamic graph) and run
    in channels_last memory format (``channels_last``; default: the run's ``eval.channels_last``).
    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        config: Mapping[str, Any],
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        device: str | torch.device = "auto",
        label_ids: Sequence[int] | None = None,
        mode: str | None = None,
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
        amp: str | None = None,
        compile: bool = False,
        channels_last: bool | None = None,
        source: str = "<model>",
        max_pixels: int | None = None,
    ) -> None:
        try:
            cfg = config_from_dict(config, source=f"{source} (its config)")
        except ConfigError as err:
            raise ValueError(str(err)) from None
        self.config = cfg
        self.model = model
        self.classes = [str(c) for c in classes]
        self.palette = [[int(v) for v in colour] for colour in palette]
        self.label_ids = None if label_ids is None else [int(v) for v in label_ids]
        self.source = source
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        ev = cfg.eval
        self.mode = mode or ("slide" if ev.mode == "slide" else "auto")
        if self.mode not in MODES:
            raise ValueError(f"inference mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels!r}")
        self.crop_size = list(crop_size or ev.crop_size or cfg.data.crop_size)
        # mode "auto" slides windows as large as max_pixels (and memory) allow, step 2/3 of them, unless
        # given; aligned to the model's size divisor (the grid of its strided layers)
        self._align = int(getattr(model, "size_divisor", 1) or 1)
        self._crop_given = list(crop_size) if crop_size else None
        self.auto_window = self._crop_given or auto_window(self.max_pixels, self._align)
        self._stride_given = list(stride) if stride is not None else None
        self._model_bytes_per_pixel: float | None = None  # measured on first need
        self.stride = list(stride) if stride is not None else ev.stride
        self.scales = [float(s) for s in (scales or ev.scales)]
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        self.flip = ev.flip if flip is None else bool(flip)
        # Autocast as in evaluation (train.amp: bf16 on CUDA by default, off on CPU) unless ``amp`` says.
        self._amp = amp_dtype(amp if amp is not None else cfg.train.amp, self.device)
        self.transform = build_transform(data_settings(cfg.data), train=False)
        torch_model = isinstance(model, torch.nn.Module)
        if not torch_model and (compile or channels_last):
            raise ValueError(
                f"compile and channels_last apply to PyTorch models, not to a {type(model).__name__}"
            )
        self.compiled = bool(compile)
        if channels_last is None:
            channels_last = cfg.eval.channels_last
        self.channels_last = torch_model and bool(channels_last)
        if torch_model:
            prepare_model(model, self.device, self.compiled, self.channels_last).eval()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "auto", **options: Any
    ) -> Segmenter:
        """Load a segkn checkpoint safely (``weights_only``) and rebuild its model, data and eval settings."""
        from segkn.engine.checkpoint import model_from_checkpoint

        model, ckpt = model_from_checkpoint(path)
        options.setdefault("label_ids", dataset_label_ids(ckpt["config"].get("data", {}).get("type", "")))
        return cls(
            model, ckpt["config"], ckpt["classes"], ckpt["palette"], device, source=str(path), **options
        )

    @classmethod
    def from_onnx(cls, path: str | Path, device: str | torch.device = "auto", **options: Any) -> Segmenter:
        """Run an exported ONNX file in ONNX Runtime, with the settings stored in its metadata."""
        from segkn.inference.runtime import OnnxModel

        model = OnnxModel(path, device=str(device))
        meta = model.metadata
        missing = [k for k in ("config", "classes", "palette") if k not in meta]
        if missing:
            raise ValueError(f"{path}: its segkn metadata lacks {', '.join(missing)}; export it again")
        options.setdefault("label_ids", meta.get("label_ids"))
        options.setdefault("amp", "off")  # the exported graph fixes its own precision
        # ONNX Runtime places the work itself (CUDA provider or CPU); tensors are handed over on the CPU.
        return cls(
            model, meta["config"], meta["classes"], meta["palette"], "cpu", source=str(path), **options
        )

    # -- inference ---------------------------------------------------------------------------------

    def _tensor(self, rgb: np.ndarray) -> Tensor:
        image, _ = self.transform(rgb, np.zeros(rgb.shape[:2], dtype=np.uint8))
        return image

    def _autocast(self) -> Any:
        if self._amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp)

    def _model_bytes(self) -> float:
        """The model's activation bytes per input pixel (a probe; a fixed figure for other models)."""
        if self._model_bytes_per_pixel is None:
            model = self.model
            if isinstance(model, torch.nn.Module):
                probe = torch.rand(1, 3, *PROBE_SIZE, device=self.device)
                with self._autocast(), eager_unless(not self.compiled):
                    self._model_bytes_per_pixel = peak_bytes_per_pixel(
                        model, to_channels_last(probe) if self.channels_last else probe
                    )
            else:
                self._model_bytes_per_pixel = float(FALLBACK_BYTES_PER_PIXEL)
        return self._model_bytes_per_pixel

    def _fitting_pixels(self) -> tuple[float, float]:
        """(pixels whole-image inference can take in the memory available now, bytes per pixel); the
        pixels are infinite where the memory available cannot be told."""
        per_pixel = whole_image_bytes(1, self._model_bytes(), self.num_classes)
        available = available_bytes(self.device)
        return (math.inf if available is None else available / per_pixel), per_pixel

    def _window(self, budget: float) -> tuple[list[int], list[int]]:
        """Mode auto's sliding window and step for at most ``budget`` pixels at once, or as given."""
        if self._crop_given or budget >= self.max_pixels:
            window = self.auto_window
        else:
            window = auto_window(int(budget), self._align)
        step = self._stride_given or [
            max(self._align, 2 * c // 3 // self._align * self._align) for c in window
        ]
        return window, step

    def _plan(self, count: int, size: tuple[int, int]) -> tuple[str, Any, Any, int] | None:
        """How to run ``count`` images of ``size``: (mode, window, step, multiple to pad the input to),
        or None to run them one at a time."""
        if self.mode == "slide":
            return "slide", self.crop_size, self.stride, 1
        pixels = count * size[0] * size[1] * max(self.scales) ** 2
        fits, per_pixel = self._fitting_pixels()
        if self.mode == "whole":
            if pixels > fits:
                where = "GPU memory" if self.device.type == "cuda" else "memory"
                images = (
                    f"a {size[0]}x{size[1]} image" if count == 1 else f"{count} images of {size[0]}x{size[1]}"
                )
                scaled = f" at scales up to {max(self.scales):g}" if max(self.scales) != 1 else ""
                need, have = bytes_text(pixels * per_pixel), bytes_text(fits * per_pixel)
                raise ValueError(
                    f"whole-image inference of {images}{scaled} needs about {need}, more than the {have} of "
                    f"{where} available; use mode auto (the default) or slide, which run windows of it, or a "
                    "smaller --batch-size"
                )
            return "whole", None, None, 1
        budget = min(self.max_pixels, fits)
        if pixels <= budget:
            return "whole", None, None, 1
        if count > 1:
            return None
        window, step = self._window(budget)
        log.info(
            "%dx%d image: sliding %dx%d windows (mode auto runs whole up to %d pixels%s)",
            *size, *window, self.max_pixels, "" if budget >= self.max_pixels else ", or what memory allows",
        )  # fmt: skip
        return "slide", window, step, self._align

    def _probs(self, images: Sequence[np.ndarray]) -> Tensor:
        """Class probabilities (N, K, H, W) for RGB images that share one size."""
        size = images[0].shape[:2]
        assert all(im.shape[:2] == size for im in images), "a batch shares one image size"
        plan = self._plan(len(images), size)
        if plan is None:
            return torch.cat([self._probs([image]) for image in images])
        mode, window, step, multiple = plan
        x = torch.stack([self._tensor(im) for im in images]).to(self.device)
        if x.shape[-2:] != size:  # resized by the transform: the windows cannot follow the model's grid
            multiple = 1
        if size[0] % multiple or size[1] % multiple:
            x = F.pad(x, (0, -size[1] % multiple, 0, -size[0] % multiple))  # zeros, as the model pads
        if self.channels_last:
            x = to_channels_last(x)
        out_size = size if multiple == 1 else x.shape[-2:]
        with self._autocast(), logged_compile(f"inference on {len(images)} image(s) of {size[0]}x{size[1]}"):
            probs = predict(self.model, x, mode, window, step, self.scales, self.flip, out_size=out_size)
        return probs[:, :, : size[0], : size[1]].float()

    def predict_proba(self, image: Image) -> np.ndarray:
        """Class probabilities of one image, a float32 (K, H, W) array at the image's size."""
        return self._probs([as_rgb(image)])[0].cpu().numpy()

    def predict(self, image: Image) -> np.ndarray:
        """The label map of one image: an H x W int64 array of train ids (class indices)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[Image], batch_size: int = 8) -> list[np.ndarray]:
        """Label maps of several images; consecutive images of one size run ``batch_size`` at a time."""
        out: list[np.ndarray] = []
        for batch in same_size_batches((as_rgb(im) for im in images), lambda rgb: rgb.shape, batch_size):
            out.extend(self._probs(batch).argmax(1).cpu().numpy().astype(np.int64))
        return out

    def to_dataset_ids(self, label_map: np.ndarray) -> np.ndarray:
        """Train ids mapped to the dataset's own label ids (Cityscapes labelIds); unchanged for others."""
        return label_map if self.label_ids is None else train_ids_to_label_ids(label_map, self.label_ids)

    def __repr__(self) -> str:
        auto = f" (whole up to {self.max_pixels} pixels)" if self.mode == "auto" else ""
        return (
            f"Segmenter({self.source}, {self.num_classes} classes, mode={self.mode}{auto}, "
            f"scales={self.scales}, flip={self.flip}, device={self.device}"
            f"{', compiled' if self.compiled else ''}{', channels_last' if self.channels_last else ''})"
        )
