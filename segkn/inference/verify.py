"""Verification of ONNX exports: the file in ONNX Runtime against its PyTorch model, on test images."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkn.engine.checkpoint import CheckpointError, file_sha256
from segkn.inference.metadata import checkpoint_sample_size, normalize_metadata
from segkn.inference.runtime import OnnxError, OnnxModel, read_metadata
from segkn.nn.geometry import to_pair

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MIN_AGREEMENT",
    "FP16_ATOL",
    "FP16_MIN_AGREEMENT",
    "ImageRecord",
    "VerificationReport",
    "default_verify_sizes",
    "eval_mode",
    "verification_image",
    "verify_checkpoint",
    "verify_onnx",
]

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.999
# float16 exports against the float32 PyTorch model. Measured (benchmarks/results.md, 24 untrained
# kinds, 19 classes, logits up to ~1.5): models with KN layers lose the most in float16, worst max |diff|
# 0.118 and agreement 0.891 (ResNet-50 + KN); GN/BN/LN models stay below 0.013 and above 0.991.
# The bounds leave about 2x room; a logit moved by 0.5 (e.g. another head bias) still fails them.
# Trained models have larger logits and float16 errors grow with them: pass atol for those if needed.
FP16_ATOL = 0.25
FP16_MIN_AGREEMENT = 0.85


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def verification_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 RGB test image (H, W, 3): colour gradients, stripes, a checkerboard,
    filled discs and rectangles, and mild noise, so that logits vary the way they do on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fy, fx = y / max(height - 1, 1), x / max(width - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    image = np.stack(
        [
            0.55 * fx + 0.25 * fy,
            0.5 * (1 - fy) + 0.2 * np.sin(2 * np.pi * 3 * fx + phase[0]),
            0.35 + 0.3 * np.sin(2 * np.pi * (2 * fx + 1.5 * fy) + phase[1]),
        ],
        axis=-1,
    )
    cell = max(4, min(height, width) // 8)
    checker = ((y // cell + x // cell) % 2).astype(np.float32)
    image += 0.1 * checker[..., None]
    for _ in range(3):  # discs
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.25) * min(height, width)
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        image[inside] = rng.uniform(0, 1, size=3)
    for _ in range(3):  # rectangles
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        y1 = min(height, y0 + 1 + int(rng.uniform(0.1, 0.4) * height))
        x1 = min(width, x0 + 1 + int(rng.uniform(0.1, 0.4) * width))
        image[y0:y1, x0:x1] = rng.uniform(0, 1, size=3)
    image += rng.normal(0.0, 0.03, size=image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def default_verify_sizes(sample_size: int | Sequence[int], size_divisor: int) -> list[tuple[int, int]]:
    """Three sizes (H, W): the export sample size; about 3/4 of it with odd sides that are multiples
    of neither 32 nor ``size_divisor``; and one larger than the sample in both sides (also odd)."""
    h, w = to_pair(sample_size, "sample_size", positive=True)

    def off_grid(n: int) -> int:
        n = max(n, 1) | 1  # odd: off every power-of-two grid
        while any(n % d == 0 for d in {32, size_divisor} if d > 1):
            n += 1
        return n

    return [
        (h, w),
        (off_grid(math.ceil(0.75 * h)), off_grid(math.ceil(0.6 * w))),
        (off_grid(h + h // 4 + 1), off_grid(w + w // 4 + 1)),
    ]


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """PyTorch against ONNX Runtime on one test image."""

    size: tuple[int, int]
    image: int  # index in the batch (its verification_image seed)
    max_abs_diff: float
    agreement: float  # fraction of pixels where both argmaxes agree
    passed: bool
    logit_scale: float = math.nan  # max |logit| of the PyTorch model: what max_abs_diff compares with


@dataclasses.dataclass
class VerificationReport:
    """The result of ``verify_onnx``: one ImageRecord per image and size, and the bounds used."""

    onnx_path: Path
    dtype: str
    atol: float
    min_agreement: float
    records: list[ImageRecord] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.records) and all(c.passed for c in self.records)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """The distinct input sizes checked, in order."""
        return list(dict.fromkeys(r.size for r in self.records))

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.records), default=math.nan)

    @property
    def worst_agreement(self) -> float:
        return min((c.agreement for c in self.records), default=math.nan)

    def table(self) -> str:
        lines = [
            f"{self.onnx_path} ({self.dtype}) vs PyTorch float32: max |diff| <= {self.atol:g}, "
            f"argmax agreement >= {self.min_agreement:g}",
            f"{'size':>11} {'image':>5} {'max |diff|':>11} {'agreement':>10} {'max |logit|':>11}  result",
        ]
        for c in self.records:
            size = f"{c.size[0]}x{c.size[1]}"
            result = "ok" if c.passed else "FAILED"
            numbers = f"{c.max_abs_diff:>11.3e} {c.agreement:>10.5f} {c.logit_scale:>11.3g}"
            lines.append(f"{size:>11} {c.image:>5} {numbers}  {result}")
        lines.append("passed" if self.passed else "FAILED")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx_path": str(self.onnx_path),
            "dtype": self.dtype,
            "atol": self.atol,
            "min_agreement": self.min_agreement,
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "worst_agreement": self.worst_agreement,
            "records": [dataclasses.asdict(c) for c in self.records],
        }


def _test_batch(size: tuple[int, int], batch: int, normalize: Mapping[str, Any] | None) -> torch.Tensor:
    images = np.stack([verification_image(*size, seed=i) for i in range(batch)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if normalize:
        mean = torch.tensor(normalize["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(normalize["std"], dtype=torch.float32).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def verify_onnx(
    model: nn.Module,
    onnx_path: str | Path,
    sizes: Sequence[Sequence[int]],
    *,
    normalize: Any = None,
    atol: float | None = None,
    min_agreement: float | None = None,
    batch: int = 2,
) -> VerificationReport:
    """Run the PyTorch model (float32, eval, no_grad) and the ONNX file (ONNX Runtime, CPU) on the same
    ``batch`` verification images at each (H, W) in ``sizes`` and compare their logits.

    ``normalize`` (None: as the file's metadata says; else a config word, {mean, std} or a
    (mean, std) pair) prepares the images. ``atol`` and ``min_agreement`` default to DEFAULT_ATOL /
    DEFAULT_MIN_AGREEMENT for float32 files and FP16_ATOL / FP16_MIN_AGREEMENT for float16 ones.
    """
    onnx_model = OnnxModel(onnx_path, device="cpu")
    fp16 = onnx_model.dtype == "float16"
    atol = (FP16_ATOL if fp16 else DEFAULT_ATOL) if atol is None else float(atol)
    min_agreement = (
        (FP16_MIN_AGREEMENT if fp16 else DEFAULT_MIN_AGREEMENT) if min_agreement is None else min_agreement
    )
    norm = onnx_model.metadata.get("normalize") if normalize is None else normalize_metadata(normalize)
    report = VerificationReport(Path(onnx_path), onnx_model.dtype, atol, float(min_agreement))
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if any(p.dtype != torch.float32 for p in params):
        model = copy.deepcopy(model).float()
    with eval_mode(model), torch.no_grad():
        for size in sizes:
            size = to_pair(size, "verification size", positive=True)
            log.info("verifying %s at %dx%d (batch %d)", onnx_path, *size, batch)
            x = _test_batch(size, batch, norm)
            expected = model(x.to(device)).float().cpu()
            got = onnx_model(x)
            if got.shape != expected.shape:
                raise OnnxError(
                    f"{onnx_path}: logits of shape {tuple(got.shape)} where the PyTorch model gives "
                    f"{tuple(expected.shape)}; is this the export of that model?"
                )
            diff = (got - expected).abs().flatten(1).amax(dim=1)
            agree = (got.argmax(1) == expected.argmax(1)).flatten(1).float().mean(dim=1)
            scale = expected.abs().flatten(1).amax(dim=1)
            for i in range(batch):
                d, a = float(diff[i]), float(agree[i])
                ok = d <= atol and a >= min_agreement  # False for NaN
                report.records.append(ImageRecord(size, i, d, a, ok, float(scale[i])))
    level = logging.INFO if report.passed else logging.WARNING
    log.log(
        level,
        "%s: verification %s (max |diff| %.3e, agreement %.5f)",
        onnx_path,
        "passed" if report.passed else "FAILED",
        report.max_abs_diff,
        report.worst_agreement,
    )
    return report


def verify_checkpoint(
    checkpoint: str | Path,
    onnx_path: str | Path,
    *,
    sizes: Sequence[Sequence[int]] | None = None,
    atol: float | None = None,
    min_agreement: float | None = None,
) -> VerificationReport:
    """Check an existing export against the checkpoint it came from (refused if the file's recorded
    checkpoint sha256 is not the checkpoint's)."""
    from segkn.engine.checkpoint import model_from_checkpoint

    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    meta = read_metadata(onnx_path)
    recorded = meta.get("checkpoint_sha256") or ""
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint file not found")
    actual = file_sha256(checkpoint)
    if recorded != actual:
        source = f"a checkpoint with sha256 {recorded}" if recorded else "a bare model (no checkpoint)"
        raise OnnxError(
            f"{onnx_path} was exported from {source}, but {checkpoint} has sha256 {actual}; verify it "
            "against the checkpoint it was exported from, or export this checkpoint again"
        )
    model, ckpt = model_from_checkpoint(checkpoint)
    sizes = sizes or default_verify_sizes(checkpoint_sample_size(ckpt), model.size_divisor)
    return verify_onnx(model, onnx_path, sizes, atol=atol, min_agreement=min_agreement)
