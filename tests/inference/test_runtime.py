"""OnnxModel and read_metadata on small hand-built ONNX graphs (no export needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from segkn.inference.runtime import OnnxError, OnnxModel, read_metadata

WEIGHT = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1) / 10  # 3 channels -> 2 classes, 1x1 conv


def write_graph(path: Path, metadata: dict[str, str] | None, elem_type: int = TensorProto.FLOAT) -> Path:
    """A 1x1-conv 'segmentation model' with dynamic batch/height/width and the given metadata_props."""
    image = helper.make_tensor_value_info("image", elem_type, ["batch", 3, "height", "width"])
    logits = helper.make_tensor_value_info("logits", elem_type, ["batch", 2, "height", "width"])
    dtype = np.float16 if elem_type == TensorProto.FLOAT16 else np.float32
    weight = numpy_helper.from_array(WEIGHT.astype(dtype), "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])], "tiny", [image], [logits], [weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def segkn_props(**changes: str) -> dict[str, str]:
    props = {
        "segkn.version": "0.1.0",
        "segkn.format": "segkn-onnx",
        "segkn.format_version": "1",
        "segkn.classes": json.dumps(["background", "thing"]),
        "segkn.palette": json.dumps([[0, 0, 0], [255, 0, 0]]),
        "segkn.normalize": "null",
        "segkn.input": "float32 NCHW RGB, pixel / 255",
        "segkn.output_stride": "16",
        "segkn.size_divisor": "32",
        "segkn.checkpoint_sha256": "",
        "segkn.checkpoint_step": "null",
        "segkn.config": json.dumps({"eval": {"mode": "whole"}}),
        "segkn.label_ids": "null",
        "segkn.dtype": "float32",
    }
    return {**props, **{f"segkn.{k}": v for k, v in changes.items()}}


def expected_logits(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, torch.from_numpy(WEIGHT))


def test_runs_like_a_model(tmp_path) -> None:
    model = OnnxModel(write_graph(tmp_path / "m.onnx", segkn_props()))
    assert model.eval() is model and model.to("cpu") is model
    assert (model.input_name, model.output_name, model.num_classes) == ("image", "logits", 2)
    assert model.dtype == "float32" and model.providers == ["CPUExecutionProvider"]
    assert model.classes == ["background", "thing"] and model.size_divisor == 32
    x = torch.rand(3, 3, 5, 7, dtype=torch.float64)  # any float dtype is cast to the file's
    out = model(x)
    assert out.dtype == torch.float32 and out.shape == (3, 2, 5, 7)
    torch.testing.assert_close(out, expected_logits(x.float()))


def test_float16_graph_takes_float32_tensors(tmp_path) -> None:
    path = write_graph(tmp_path / "h.onnx", segkn_props(dtype="float16"), TensorProto.FLOAT16)
    model = OnnxModel(path)
    assert model.dtype == "float16"
    x = torch.rand(1, 3, 4, 4)
    out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected_logits(x), atol=2e-3, rtol=2e-3)


def test_read_metadata_decodes_json(tmp_path) -> None:
    meta = read_metadata(write_graph(tmp_path / "m.onnx", segkn_props()))
    assert meta["classes"] == ["background", "thing"] and meta["palette"][1] == [255, 0, 0]
    assert meta["normalize"] is None and meta["checkpoint_step"] is None
    assert meta["config"] == {"eval": {"mode": "whole"}}
    assert meta["output_stride"] == 16 and meta["format_version"] == 1 and meta["version"] == "0.1.0"


def test_missing_file(tmp_path) -> None:
    with pytest.raises(OnnxError, match=r"nothere\.onnx: ONNX file not found"):
        OnnxModel(tmp_path / "nothere.onnx")
    with pytest.raises(OnnxError, match="not a file"):
        OnnxModel(tmp_path)


@pytest.mark.parametrize("content", [b"this is a text file, not a model\n", b"", bytes(range(256)) * 4])
def test_not_an_onnx_file(tmp_path, content) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxError, match=r"model\.onnx: not an ONNX model"):
        OnnxModel(path)
    with pytest.raises(OnnxError, match=r"model\.onnx: not an ONNX model"):
        read_metadata(path)


def test_onnx_file_without_segkn_metadata(tmp_path) -> None:
    path = write_graph(tmp_path / "plain.onnx", None)
    with pytest.raises(OnnxError, match=r"plain\.onnx: an ONNX model without segkn metadata"):
        OnnxModel(path)
    path = write_graph(tmp_path / "other.onnx", {"author": "someone"})
    with pytest.raises(OnnxError, match="without segkn metadata"):
        read_metadata(path)


def test_newer_format_and_bad_json_are_refused(tmp_path) -> None:
    with pytest.raises(OnnxError, match="format version 2"):
        OnnxModel(write_graph(tmp_path / "new.onnx", segkn_props(format_version="2")))
    with pytest.raises(OnnxError, match=r"segkn\.classes is not valid JSON"):
        read_metadata(write_graph(tmp_path / "bad.onnx", segkn_props(classes="[road")))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present")
def test_cuda_device_without_cuda_provider(tmp_path) -> None:
    path = write_graph(tmp_path / "m.onnx", segkn_props())
    with pytest.raises(OnnxError, match="no CUDAExecutionProvider"):
        OnnxModel(path, device="cuda:0")
    assert OnnxModel(path, device="auto").providers == ["CPUExecutionProvider"]
    with pytest.raises(OnnxError, match="expected cpu, cuda"):
        OnnxModel(path, device="tpu")
