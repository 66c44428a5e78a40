"""Inference: the ``Segmenter`` API, batch segmentation of files, visualization, ONNX export and runtime."""

from typing import Any

__all__ = ["Segmenter"]


def __getattr__(name: str) -> Any:
    # `from segkn.inference import Segmenter` as before, while importing one submodule (the command line
    # reads constants from segkn.inference.runtime) does not load the predictor and its data stack
    if name == "Segmenter":
        from segkn.inference.predictor import Segmenter

        return Segmenter
    raise AttributeError(f"module 'segkn.inference' has no attribute {name!r}")
