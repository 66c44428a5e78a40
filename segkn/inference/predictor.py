"""The Python inference API: ``Segmenter`` turns images into label maps with a checkpoint or an ONNX file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segkn.config import ConfigError, config_from_dict
from segkn.data.cityscapes import train_ids_to_label_ids
from segkn.data.errors import DatasetError
from segkn.data.io import read_image
from segkn.data.registry import data_settings, dataset_label_ids
from segkn.data.transforms import build_transform
from segkn.engine.acceleration import logged_compile, prepare_model, to_channels_last
from segkn.engine.device import amp_dtype, resolve_device
from segkn.models.prediction import predict, same_size_batches

__all__ = ["Segmenter", "as_rgb"]

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
        self.mode = mode or ev.mode
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be whole or slide, got {self.mode!r}")
        self.crop_size = list(crop_size or ev.crop_size or cfg.data.crop_size)
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

    def _probs(self, images: Sequence[np.ndarray]) -> Tensor:
        """Class probabilities (N, K, H, W) for RGB images that share one size."""
        size = images[0].shape[:2]
        assert all(im.shape[:2] == size for im in images), "a batch shares one image size"
        x = torch.stack([self._tensor(im) for im in images]).to(self.device)
        if self.channels_last:
            x = to_channels_last(x)
        with self._autocast(), logged_compile(f"inference on {len(images)} image(s) of {size[0]}x{size[1]}"):
            return predict(
                self.model, x, self.mode, self.crop_size, self.stride, self.scales, self.flip, out_size=size
            ).float()

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
        return (
            f"Segmenter({self.source}, {self.num_classes} classes, mode={self.mode}, scales={self.scales}, "
            f"flip={self.flip}, device={self.device}{', compiled' if self.compiled else ''}"
            f"{', channels_last' if self.channels_last else ''})"
        )
