"""ONNX export of segkn models and checkpoints, with segkn metadata and a check against PyTorch."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkn.atomic import atomic_open
from segkn.data.registry import dataset_label_ids
from segkn.engine.checkpoint import file_sha256
from segkn.inference.runtime import (
    FORMAT,
    FORMAT_VERSION,
    JSON_KEYS,
    METADATA_KEYS,
    PREFIX,
    OnnxError,
    OnnxModel,
    read_metadata,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MIN_AGREEMENT",
    "FP16_ATOL",
    "FP16_MIN_AGREEMENT",
    "MIN_OPSET",
    "ImageRecord",
    "VerificationReport",
    "build_metadata",
    "default_verify_sizes",
    "export_checkpoint",
    "export_onnx",
    "file_sha256",
    "verification_image",
    "verify_checkpoint",
    "verify_onnx",
]

log = logging.getLogger(__name__)

# torch's dynamo exporter writes opset 18 and cannot convert segkn graphs (their Pad) down to 17.
MIN_OPSET = 18
DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.999
# float16 exports against the float32 PyTorch model. Measured (benchmarks/results.md, 24 untrained
# kinds, 19 classes, logits up to ~1.5): models with KN layers lose the most in float16, worst max |diff|
# 0.118 and agreement 0.891 (ResNet-50 + KN); GN/BN/LN models stay below 0.013 and above 0.991.
# The bounds leave about 2x room; a logit moved by 0.5 (e.g. another head bias) still fails them.
# Trained models have larger logits and float16 errors grow with them: pass atol for those if needed.
FP16_ATOL = 0.25
FP16_MIN_AGREEMENT = 0.85


# --- metadata ---------------------------------------------------------------------------------------


def _model_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, Mapping) or "num_classes" not in cfg or not hasattr(model, "size_divisor"):
        raise ValueError(
            f"{type(model).__name__} is not a segkn model (no .config / .size_divisor); build it with "
            "segkn.models.build_model"
        )
    return dict(cfg)


def _normalize_value(value: Any) -> dict[str, list[float]] | None:
    """``normalize`` metadata from a config word, a {mean, std} mapping or a (mean, std) pair."""
    from segkn.data.transforms import resolve_normalize

    if isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value[0], (int, float)):
        pair: tuple[Any, Any] | None = (value[0], value[1])
    else:
        pair = resolve_normalize(value)
    if pair is None:
        return None
    mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in pair)
    # shortest text of the float32 values that the transforms use: 0.485, not 0.48500001
    return {
        "mean": [float(str(np.float32(v))) for v in mean],
        "std": [float(str(np.float32(v))) for v in std],
    }


def _input_sentence(normalize: dict[str, list[float]] | None, dtype: str) -> str:
    text = f"{dtype} NCHW RGB, pixel / 255"
    return text + (", then (x - mean) / std" if normalize else "")


def _label_ids(config: Mapping[str, Any] | None, num_classes: int) -> list[int] | None:
    data = (config or {}).get("data") or {}
    ids = dataset_label_ids(str(data.get("type", "")))
    return ids if ids is not None and len(ids) == num_classes else None


def build_metadata(
    model: nn.Module, values: Mapping[str, Any] | None = None, *, dtype: str = "float32"
) -> dict[str, Any]:
    """Decoded metadata for ``model``: ``values`` (keys as in METADATA_KEYS, with or without the
    ``segkn.`` prefix) over defaults taken from the model (its classes are named by number, its
    normalization is the training default for its norm: none for kn, else ImageNet)."""
    from segkn import __version__
    from segkn.data.base import default_palette

    cfg = _model_config(model)
    given = {str(k).removeprefix(PREFIX): v for k, v in (values or {}).items()}
    unknown = sorted(set(given) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"metadata: unknown key(s) {unknown}; valid keys: {', '.join(METADATA_KEYS)}")
    num_classes = int(cfg["num_classes"])
    encoder = getattr(model, "encoder", None)
    output_stride = int(getattr(encoder, "output_stride", cfg.get("output_stride", 32)))
    config = given.get("config")
    if "normalize" in given:
        normalize = _normalize_value(given["normalize"])
    else:
        data_cfg = (config or {}).get("data") or {}
        word = data_cfg.get("normalize") or ("none" if cfg["norm"] == "kn" else "imagenet")
        normalize = _normalize_value(word)
    meta: dict[str, Any] = {
        "version": __version__,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": [f"class_{i}" for i in range(num_classes)],
        "palette": [list(c) for c in default_palette(num_classes)],
        "checkpoint_sha256": "",
        "checkpoint_step": None,
        "config": None,
        "label_ids": _label_ids(config, num_classes),
        **given,
        "normalize": normalize,
        "input": _input_sentence(normalize, dtype),
        "output_stride": output_stride,
        "size_divisor": int(model.size_divisor),
        "dtype": dtype,
    }
    if len(meta["classes"]) != num_classes or len(meta["palette"]) < num_classes:
        raise ValueError(
            f"metadata: the model has {num_classes} classes but {len(meta['classes'])} names and "
            f"{len(meta['palette'])} palette colours were given"
        )
    meta["classes"] = [str(c) for c in meta["classes"]]
    meta["palette"] = [[int(v) for v in c] for c in meta["palette"]]
    return meta


def _encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    return {
        PREFIX + key: json.dumps(meta[key])
        if key in JSON_KEYS
        else str(meta[key] if meta[key] is not None else "")
        for key in METADATA_KEYS
    }


# --- export -----------------------------------------------------------------------------------------


def _pair(size: int | Sequence[int], name: str = "sample_size") -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"{name}: expected positive (height, width), got {size!r}")
    return h, w


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def _quiet_export(model: nn.Module, sample: torch.Tensor, opset: int) -> Any:
    """torch.onnx.export (dynamo) with dynamic batch, height and width; progress notes go to the log."""
    dim = torch.export.Dim
    dynamic = ({0: dim("batch"), 2: dim("height"), 3: dim("width")},)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = torch.onnx.export(
            model,
            (sample,),
            dynamo=True,
            dynamic_shapes=dynamic,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
            optimize=True,
        )
    for w in {str(w.message).splitlines()[0] for w in caught}:
        log.debug("torch.onnx: %s", w)
    return program


def _check(proto: Any, path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.shape_inference.InferenceError as err:  # type: ignore[attr-defined]
        log.warning("%s: ONNX shape inference failed (%s); running the basic check only", path, err)
        onnx.checker.check_model(proto)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    sample_size: int | Sequence[int] = (512, 512),
    opset: int = 18,
    fp16: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export a segkn model to an ONNX file with dynamic batch, height and width, and segkn metadata.

    Uses the dynamo exporter at ``opset`` (>= 18), checks the graph with ``onnx.checker`` (full
    check), and writes atomically: on any failure ``path`` is left as it was. ``metadata`` holds
    entries such as classes, palette, normalize, config (see ``build_metadata``); the rest comes
    from the model. The input image is ``float32 (N, 3, H, W)`` RGB in [0, 1] (then mean/std
    normalized when ``normalize`` is set); the output is logits ``(N, K, H, W)``.

    ``fp16=True`` exports a float16 copy of the model: weights, activations, input and output are
    float16 (``segkn.dtype`` and ``segkn.input`` say so; ``OnnxModel`` casts for you), while the
    Kernel Normalization statistics stay float32 inside the graph, as in PyTorch under ``.half()``.
    ONNX Runtime's CPU provider runs it (it computes float16 ops that it lacks in float32); the
    speed and memory gain is on GPUs. Agreement with the float32 model is looser: FP16_ATOL,
    FP16_MIN_AGREEMENT.
    """
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset {opset!r} is too old: segkn ONNX exports need opset >= {MIN_OPSET}")
    path = Path(path)
    h, w = _pair(sample_size)
    dtype = torch.float16 if fp16 else torch.float32
    meta = build_metadata(model, metadata, dtype="float16" if fp16 else "float32")
    cfg = _model_config(model)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if any(p.dtype != dtype for p in params):
        model = copy.deepcopy(model).to(dtype)
    sample = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    name = f"{cfg['arch']}_{cfg['encoder']}_{cfg['norm']}"
    log.info("exporting %s to %s (opset %d, %s, sample %dx%d)", name, path, opset, meta["dtype"], h, w)
    start = time.perf_counter()
    with _eval_mode(model):
        program = _quiet_export(model, sample, opset)
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise OnnxError(f"{path}: torch.onnx wrote opset {written}, not the opset {opset} asked for; use 18")
    proto.producer_name = "segkn"
    proto.producer_version = str(meta["version"])
    proto.graph.name = name
    proto.doc_string = (
        f"segkn {name} semantic segmentation, {len(meta['classes'])} classes. Input 'image': "
        f"{meta['input']}, shape (batch, 3, height, width), any size. Output 'logits': "
        f"{meta['dtype']} (batch, classes, height, width). Exported with torch {torch.__version__} "
        f"(dynamo exporter), opset {opset}."
    )
    del proto.metadata_props[:]
    for key, value in _encode_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    _check(proto, path)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    log.info("exported %s in %.1f s (%.1f MB)", path, time.perf_counter() - start, path.stat().st_size / 1e6)
    return path


# --- verification -----------------------------------------------------------------------------------


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
    h, w = _pair(sample_size)

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
    norm = onnx_model.metadata.get("normalize") if normalize is None else _normalize_value(normalize)
    report = VerificationReport(Path(onnx_path), onnx_model.dtype, atol, float(min_agreement))
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if any(p.dtype != torch.float32 for p in params):
        model = copy.deepcopy(model).float()
    with _eval_mode(model), torch.no_grad():
        for size in sizes:
            size = _pair(size, "verification size")
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


# --- checkpoints ------------------------------------------------------------------------------------


def _checkpoint_metadata(ckpt: Mapping[str, Any], sha256: str) -> dict[str, Any]:
    from segkn.config import config_from_dict

    config = ckpt["config"]
    resolved = config_from_dict(config)
    return {
        "classes": list(ckpt["classes"]),
        "palette": [list(c) for c in ckpt["palette"]],
        "normalize": resolved.data.normalize,
        "config": resolved.to_dict(),
        "checkpoint_sha256": sha256,
        "checkpoint_step": ckpt.get("step"),
    }


def _checkpoint_sample_size(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    crop = ((ckpt.get("config") or {}).get("data") or {}).get("crop_size") or (512, 512)
    return _pair(crop)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    sample_size: int | Sequence[int] | None = None,
    opset: int = 18,
    fp16: bool = False,
    verify: bool = True,
    verify_sizes: Sequence[Sequence[int]] | None = None,
    atol: float | None = None,
    min_agreement: float | None = None,
) -> tuple[Path, VerificationReport | None]:
    """Export a segkn checkpoint to ONNX (metadata from the checkpoint) and, with ``verify``, check it
    against the checkpoint's PyTorch model at ``verify_sizes`` (default: ``default_verify_sizes``).

    ``sample_size`` defaults to the checkpoint's ``data.crop_size``. The checkpoint is read with the
    safe loader (CheckpointError propagates). A file that fails verification is kept, so that it can
    be inspected: the caller decides (the CLI exits non-zero and says so).
    """
    from segkn.engine.evaluator import model_from_checkpoint

    checkpoint = Path(checkpoint)
    model, ckpt = model_from_checkpoint(checkpoint)
    sha256 = file_sha256(checkpoint)
    size = _pair(sample_size) if sample_size is not None else _checkpoint_sample_size(ckpt)
    path = export_onnx(
        model, out, sample_size=size, opset=opset, fp16=fp16, metadata=_checkpoint_metadata(ckpt, sha256)
    )
    if not verify:
        return path, None
    sizes = verify_sizes or default_verify_sizes(size, model.size_divisor)
    return path, verify_onnx(model, path, sizes, atol=atol, min_agreement=min_agreement)


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
    from segkn.engine.checkpoint import CheckpointError
    from segkn.engine.evaluator import model_from_checkpoint

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
    sizes = sizes or default_verify_sizes(_checkpoint_sample_size(ckpt), model.size_divisor)
    return verify_onnx(model, onnx_path, sizes, atol=atol, min_agreement=min_agreement)
