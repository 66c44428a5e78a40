"""ONNX export of segkn models and checkpoints, with segkn metadata; checkpoints are verified after export.

Verification lives in ``segkn.inference.verify`` and the metadata in ``segkn.inference.metadata``; their
public names are importable from here too, the way the export workflow uses them.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkn.atomic import atomic_open
from segkn.engine.checkpoint import file_sha256
from segkn.inference.metadata import (
    build_metadata,
    checkpoint_metadata,
    checkpoint_sample_size,
    encode_metadata,
    model_config,
)
from segkn.inference.runtime import MIN_OPSET, OnnxError
from segkn.inference.verify import (
    DEFAULT_ATOL,
    DEFAULT_MIN_AGREEMENT,
    FP16_ATOL,
    FP16_MIN_AGREEMENT,
    ImageRecord,
    VerificationReport,
    default_verify_sizes,
    eval_mode,
    verification_image,
    verify_checkpoint,
    verify_onnx,
)
from segkn.nn.geometry import to_pair

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
    "failed_path",
    "file_sha256",
    "verification_image",
    "verify_checkpoint",
    "verify_onnx",
]

log = logging.getLogger(__name__)


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
    opset: int = MIN_OPSET,
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
    h, w = to_pair(sample_size, "sample_size", positive=True)
    dtype = torch.float16 if fp16 else torch.float32
    meta = build_metadata(model, metadata, dtype="float16" if fp16 else "float32")
    cfg = model_config(model)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if any(p.dtype != dtype for p in params):
        model = copy.deepcopy(model).to(dtype)
    sample = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    name = f"{cfg['arch']}_{cfg['encoder']}_{cfg['norm']}"
    log.info("exporting %s to %s (opset %d, %s, sample %dx%d)", name, path, opset, meta["dtype"], h, w)
    start = time.perf_counter()
    with eval_mode(model):
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
    for key, value in encode_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    _check(proto, path)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    log.info("exported %s in %.1f s (%.1f MB)", path, time.perf_counter() - start, path.stat().st_size / 1e6)
    return path


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    sample_size: int | Sequence[int] | None = None,
    opset: int = MIN_OPSET,
    fp16: bool = False,
    verify: bool = True,
    verify_sizes: Sequence[Sequence[int]] | None = None,
    atol: float | None = None,
    min_agreement: float | None = None,
) -> tuple[Path, VerificationReport | None]:
    """Export a segkn checkpoint to ONNX (metadata from the checkpoint) and, with ``verify``, check it
    against the checkpoint's PyTorch model at ``verify_sizes`` (default: ``default_verify_sizes``).

    ``sample_size`` defaults to the checkpoint's ``data.crop_size``. The checkpoint is read with the
    safe loader (CheckpointError propagates). A verified export is written as ``<stem>.unverified.onnx``
    beside ``out`` first and takes ``out``'s place only when it passes; one that fails goes to
    ``failed_path(out)`` for inspection and a file already at ``out`` stays as it was. Returns where
    the export is and the report (None without ``verify``); the caller reports a failure (the CLI exits 1).
    """
    from segkn.engine.checkpoint import model_from_checkpoint

    checkpoint, out = Path(checkpoint), Path(out)
    model, ckpt = model_from_checkpoint(checkpoint)
    sha256 = file_sha256(checkpoint)
    if sample_size is None:
        size = checkpoint_sample_size(ckpt)
    else:
        size = to_pair(sample_size, "sample_size", positive=True)
    metadata = checkpoint_metadata(ckpt, sha256)
    if not verify:
        return export_onnx(model, out, sample_size=size, opset=opset, fp16=fp16, metadata=metadata), None
    candidate = out.with_name(f"{out.stem}.unverified.onnx")
    try:
        export_onnx(model, candidate, sample_size=size, opset=opset, fp16=fp16, metadata=metadata)
        sizes = verify_sizes or default_verify_sizes(size, model.size_divisor)
        report = verify_onnx(model, candidate, sizes, atol=atol, min_agreement=min_agreement)
        path = out if report.passed else failed_path(out)
        os.replace(candidate, path)
    finally:
        candidate.unlink(missing_ok=True)
    return path, report


def failed_path(out: str | Path) -> Path:
    """Where ``export_checkpoint`` puts an export to ``out`` that fails verification: <stem>.failed.onnx."""
    out = Path(out)
    return out.with_name(f"{out.stem}.failed.onnx")
