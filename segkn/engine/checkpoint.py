"""Checkpoint files: atomic writes, safe (weights_only) reads, the model a checkpoint holds, RNG state."""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkn.atomic import atomic_open
from segkn.config import Config, ConfigError, config_from_dict
from segkn.engine import distributed

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "capture_rng_state",
    "checkpoint_payload",
    "file_sha256",
    "first_line",
    "load_checkpoint",
    "load_init_weights",
    "model_from_checkpoint",
    "plain_state_dict",
    "publish_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "save_run_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "segkn-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("config", "model", "classes", "palette")
# exact types that torch.load(weights_only=True) reads back (subclasses such as numpy.float64 are refused)
_PLAIN_LEAVES = {type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value that torch.load(weights_only=True) could not read back."""
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple, set):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif type(obj) not in _PLAIN_LEAVES and not isinstance(obj, torch.Tensor):
        raise TypeError(
            f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only tensors "
            "and plain values (convert it, e.g. with .tolist() or float())"
        )


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write `payload` (format and version are added) to `path` atomically: temp file, fsync, rename."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing or data["format"] != FORMAT:
        raise ValueError(f"checkpoint payload for {path} lacks {missing} or has format {data['format']!r}")
    _check_plain(data, "checkpoint")
    with atomic_open(path, "wb") as f:  # on any failure the temp file goes and ``path`` stays as it was
        try:
            torch.save(data, f)
        except RuntimeError as err:
            # torch.save reports what interrupted a write to a file object (Ctrl-C, a full disk) as its own
            # "unexpected pos" error: raise what happened instead
            context = err.__context__
            if isinstance(context, OSError) or (
                isinstance(context, BaseException) and not isinstance(context, Exception)
            ):
                raise context from None
            raise


def save_run_checkpoint(path: Path, payload: Mapping[str, Any], kept: str, run_dir: Path) -> None:
    """`save_checkpoint` for a run; a failed write (a full disk) is one CheckpointError: what is ``kept``."""
    try:
        save_checkpoint(path, payload)
    except OSError as err:
        raise CheckpointError(
            f"cannot write {path}: {err.strerror or err}; the file was left as it was and {kept} "
            f"(free some space, then continue with segkn train --resume {run_dir})"
        ) from None


def first_line(err: BaseException) -> str:
    """``"ErrorType: first line of its message"``: an exception in a one-line error message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _refusal_detail(err: pickle.UnpicklingError) -> str | None:
    """The reason in torch's weights_only refusal message, or None if this is another unpickling error."""
    text = str(err)
    if "Weights only load failed" not in text:
        return None
    for paragraph in re.split(r"\n\s*\n", text):
        reason = " ".join(paragraph.split()).partition("WeightsUnpickler error:")
        reason = reason[2] if reason[1] else reason[0]
        if "GLOBAL" in reason or "nsupported" in reason:
            return reason.split(". Please")[0].strip().rstrip(".")
    return "content other than tensors and plain values"


def _describe_foreign(obj: Any) -> str:
    """What a loaded object that is not a segkn checkpoint looks like, and what to do with it."""
    if not isinstance(obj, dict):
        return f"it holds a {type(obj).__name__}, not a segkn checkpoint dict"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return (
            f"it looks like a raw model state_dict ({len(obj)} tensors, first {next(iter(obj))!r}); "
            "to start an encoder from it set model.encoder_weights=<file>"
        )
    if isinstance(obj.get("model"), dict):
        return (
            "it looks like a classifier training checkpoint with a 'model' state_dict (like the official "
            "KNResNet ImageNet weights knresnet*_imagenet.pth); use it as model.encoder_weights=<file> "
            "to initialize the encoder, not as a segkn checkpoint"
        )
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    return f"it is a dict with keys {keys} and no format {FORMAT!r}"


def _looks_like_onnx(path: Path) -> bool:
    """True when the file starts as a serialized ONNX ModelProto does: its fields in number order, the
    first being ir_version (tag 0x08, a small varint), followed by producer_name, ..., graph."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError:
        return False
    return (
        len(head) == 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in b"\x12\x1a\x22\x28\x32\x3a"
    )


def _onnx_instead(path: Path) -> CheckpointError | None:
    """The error for an ONNX file given where a checkpoint belongs, or None for other files."""
    if not _looks_like_onnx(path):
        return None
    return CheckpointError(
        f"{path}: this is an ONNX model file, not a segkn checkpoint; run it with `segkn infer --onnx "
        f"{path}` (Segmenter.from_onnx), and pass --checkpoint the .pth file it was exported from"
    )


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a segkn checkpoint with torch.load(weights_only=True); CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint file not found" if not path.exists() else f"{path}: not a file"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if onnx_error := _onnx_instead(path):
            raise onnx_error from None
        detail = _refusal_detail(err)
        if detail is None:
            raise CheckpointError(
                f"{path}: cannot read the checkpoint, it is corrupt ({first_line(err)})"
            ) from None
        raise CheckpointError(
            f"{path}: refused by the safe loader (torch.load weights_only=True): {detail}. Nothing in the "
            "file was executed. segkn checkpoints hold only tensors and plain values; this file holds other "
            "Python objects or code, or is corrupt. Use weights_only=False only on files you trust."
        ) from None
    except MemoryError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        if onnx_error := _onnx_instead(path):
            raise onnx_error from None
        raise CheckpointError(
            f"{path}: cannot read the checkpoint; the file is truncated or corrupt, or is not a PyTorch file "
            f"({first_line(err)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a segkn checkpoint: {_describe_foreign(obj)}")
    if not isinstance(obj.get("version"), int) or obj["version"] > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {obj.get('version')!r} is newer than this segkn "
            f"reads ({VERSION}); upgrade segkn"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: incomplete segkn checkpoint, missing {', '.join(missing)}")
    if isinstance(obj["model"], dict):
        obj["model"] = plain_state_dict(obj["model"])
    return obj


def plain_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` under its module names: the ``_orig_mod.`` that ``torch.compile(model)`` adds is dropped.

    segkn compiles modules in place and never writes such keys; this reads files written otherwise.
    A state without them is returned as is (with torch's version metadata).
    """
    if not any("_orig_mod." in key for key in state):
        return state
    return {key.replace("_orig_mod.", ""): value for key, value in state.items()}


def model_from_checkpoint(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model a segkn checkpoint describes (its own model config), with its weights loaded."""
    from segkn.models import build_model  # imported on use: reading checkpoints needs no models

    ckpt = load_checkpoint(checkpoint)
    try:
        model_cfg = config_from_dict(ckpt["config"], source=f"{checkpoint} (its config)").model
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    # The checkpoint holds every weight: the encoder initialization file it was trained from is not
    # needed (nor, on another machine, present).
    model = build_model({**model_cfg.to_dict(), "encoder_weights": None})
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{checkpoint}: weights do not fit its model: {str(err).splitlines()[0]}"
        ) from None
    return model, ckpt


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Start ``model`` from a segkn checkpoint's weights, skipping tensors whose name or shape differ."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise CheckpointError(
            f"{path}: none of its {len(state)} weights fit this model (other architecture?)"
        )
    model.load_state_dict(fitting, strict=False)
    skipped = sorted(set(own) - set(fitting))
    log.info("initialized %d of %d tensors from %s", len(fitting), len(own), path)
    if skipped:
        log.warning("not in %s or of another shape, left as built: %s", path, ", ".join(skipped[:8]))


def checkpoint_payload(
    cfg: Config, model: nn.Module, classes: Any, palette: Any, **extra: Any
) -> dict[str, Any]:
    """The DESIGN.md checkpoint dict: config, weights, classes, palette and any of optimizer ... rng."""
    return {
        "config": cfg.to_dict(),
        "model": distributed.unwrap(model).state_dict(),
        "classes": [str(c) for c in classes],
        "palette": [[int(v) for v in colour] for colour in palette],
        **extra,
    }


# what a released checkpoint keeps: enough to rebuild, run and describe the model, no training state
PUBLISHED_KEYS = ("config", "model", "classes", "palette", "step", "best")


def publish_checkpoint(src: str | Path, dst: str | Path, fp16: bool = False) -> dict[str, Any]:
    """Write a release copy of a training checkpoint: weights, config, classes, palette, step and best.

    Optimizer, scheduler, scaler and RNG state are left out; with ``fp16`` floating-point weights are
    stored as float16 (they load back into float32 models). Returns the written payload.
    """
    ckpt = load_checkpoint(src)
    payload = {k: ckpt[k] for k in PUBLISHED_KEYS if k in ckpt}
    if fp16:
        payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    if Path(dst).resolve() == Path(src).resolve():
        raise CheckpointError(f"{dst}: write the release copy to a new file, not over the checkpoint itself")
    save_checkpoint(dst, payload)
    return payload


def capture_rng_state() -> dict[str, Any]:
    """States of the python, numpy, torch CPU and (if initialized) CUDA generators, as plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the generators from a `capture_rng_state()` dict (tensors may sit on any device)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    keys = nps["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((nps["kind"], keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log.warning(
                "CUDA RNG state saved for %d devices but %d are visible; CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )
