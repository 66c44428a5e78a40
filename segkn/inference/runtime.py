"""Run an exported segkn ONNX file with ONNX Runtime, in place of the PyTorch model it came from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkn.engine.checkpoint import first_line

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "JSON_KEYS",
    "METADATA_KEYS",
    "MIN_OPSET",
    "OnnxError",
    "OnnxModel",
    "read_metadata",
    "session_options",
]

log = logging.getLogger(__name__)

FORMAT = "segkn-onnx"
FORMAT_VERSION = 1
# torch's dynamo exporter writes opset 18 and cannot convert segkn graphs (their Pad) down to 17.
MIN_OPSET = 18
PREFIX = "segkn."
# Every segkn metadata entry, without the "segkn." prefix that it carries in the ONNX file.
METADATA_KEYS = (
    "version",
    "format",
    "format_version",
    "classes",
    "palette",
    "normalize",
    "input",
    "output_stride",
    "size_divisor",
    "checkpoint_sha256",
    "checkpoint_step",
    "config",
    "label_ids",
    "dtype",
)
# Entries stored as JSON text; the others are plain strings.
JSON_KEYS = frozenset(
    {
        "format_version",
        "classes",
        "palette",
        "normalize",
        "output_stride",
        "size_divisor",
        "checkpoint_step",
        "config",
        "label_ids",
    }
)
_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxError(ValueError):
    """An ONNX file that segkn cannot use; the message names the file and what to do."""


def _load_proto(path: Path) -> Any:
    """The ModelProto of ``path`` (weights in external files are not read); OnnxError if it is not ONNX."""
    import onnx

    if not path.is_file():
        raise OnnxError(f"{path}: ONNX file not found" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" or head[:1] == b"\x80":  # a zip archive (torch.save) or a pickle
        raise OnnxError(
            f"{path}: this is a PyTorch file (a segkn checkpoint?), not an ONNX model; pass it with "
            f"--checkpoint (Segmenter.from_checkpoint), or export it first: segkn export --checkpoint {path} "
            "--out MODEL.onnx"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning-like errors, ... for other files
        raise OnnxError(f"{path}: not an ONNX model file ({first_line(err)})") from None
    # Protobuf parses some foreign bytes without complaint; a real model has an IR version and a graph.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise OnnxError(f"{path}: not an ONNX model file (no IR version or empty graph)")
    return proto


def decode_metadata(props: dict[str, str], path: Path | str) -> dict[str, Any]:
    """The segkn entries of an ONNX file's ``metadata_props``, prefix dropped and JSON values decoded."""
    if props.get(PREFIX + "format") != FORMAT:
        raise OnnxError(
            f"{path}: an ONNX model without segkn metadata (no '{PREFIX}format: {FORMAT}' entry); "
            "export it with `segkn export` (segkn.inference.export) to use it here"
        )
    meta: dict[str, Any] = {}
    for key in METADATA_KEYS:
        if PREFIX + key not in props:
            continue
        text = props[PREFIX + key]
        if key in JSON_KEYS:
            try:
                meta[key] = json.loads(text)
            except json.JSONDecodeError:
                raise OnnxError(
                    f"{path}: metadata entry {PREFIX + key} is not valid JSON: {text[:80]!r}"
                ) from None
        else:
            meta[key] = text
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise OnnxError(
            f"{path}: segkn ONNX format version {version!r} is not one this segkn reads "
            f"({FORMAT_VERSION}); upgrade segkn or export the model again"
        )
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Decoded segkn metadata of an ONNX file, without running it (keys: METADATA_KEYS, no prefix)."""
    path = Path(path)
    proto = _load_proto(path)
    return decode_metadata({p.key: p.value for p in proto.metadata_props}, path)


def session_options() -> Any:
    """ONNX Runtime session options: warnings and errors only, default threading and graph optimization."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # 0 verbose .. 4 fatal; 3 keeps the per-node placement notes quiet
    return options


def _providers(device: str | torch.device) -> list[Any]:
    """Execution providers for a device word: cpu | cuda | cuda:N | auto."""
    import onnxruntime as ort

    word = str(device)
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if word == "auto":
        word = "cuda" if has_cuda else "cpu"
    if word == "cpu":
        return ["CPUExecutionProvider"]
    if word == "cuda" or word.startswith("cuda:"):
        if not has_cuda:
            raise OnnxError(
                f"device {word!r}: this onnxruntime has no CUDAExecutionProvider (it offers "
                f"{', '.join(available)}); install onnxruntime-gpu, or use device 'cpu'"
            )
        index = word.partition(":")[2] or "0"
        if not index.isdigit():
            raise OnnxError(f"device {word!r}: expected cpu, cuda, cuda:N or auto")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise OnnxError(f"device {word!r}: expected cpu, cuda, cuda:N or auto")


class OnnxModel:
    """Runs an exported segkn ONNX file like a segkn model: float32 (N,3,H,W) -> float32 logits (N,K,H,W).

    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when this onnxruntime offers it);
    ``providers`` (a list as ``onnxruntime.InferenceSession`` takes it) overrides it. The input is
    cast to the file's input dtype (float16 for fp16 exports) and the logits come back as float32 on
    the input's device. ``metadata`` holds the decoded segkn entries (see ``read_metadata``).
    """

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", providers: list[Any] | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata: dict[str, Any] = read_metadata(self.path)
        wanted = list(providers) if providers is not None else _providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(), providers=wanted)
        except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / ... types
            raise OnnxError(f"{self.path}: ONNX Runtime cannot load it ({first_line(err)})") from None
        self.providers: list[str] = self.session.get_providers()
        first = wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
        if first not in self.providers:
            log.warning("%s: %s is not used, running on %s", self.path, first, ", ".join(self.providers))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise OnnxError(
                f"{self.path}: expected one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        inp, out = inputs[0], outputs[0]
        if inp.type not in _NUMPY_DTYPES:
            raise OnnxError(f"{self.path}: input {inp.name!r} has type {inp.type}; expected float or float16")
        self.input_name: str = inp.name
        self.output_name: str = out.name
        self.dtype: str = "float16" if _NUMPY_DTYPES[inp.type] is np.float16 else "float32"
        channels = out.shape[1] if len(out.shape) == 4 else None
        self.num_classes: int = (
            channels if isinstance(channels, int) else len(self.metadata.get("classes", []))
        )
        self.size_divisor: int = int(self.metadata.get("size_divisor", 1))
        self.training = False

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes") or [])

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.metadata.get("palette") or []]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{self.path}: expected an (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
        dtype = torch.float16 if self.dtype == "float16" else torch.float32
        array = x.detach().to("cpu", dtype).contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits).float().to(x.device)

    def eval(self) -> OnnxModel:
        return self

    def to(self, device: Any) -> OnnxModel:
        return self

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, classes={self.num_classes}, dtype={self.dtype}, "
            f"providers={self.providers})"
        )
