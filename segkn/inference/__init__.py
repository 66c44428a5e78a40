"""Inference: the ``Segmenter`` API, batch segmentation of files, visualization, ONNX export and runtime."""

from segkn.inference.predictor import Segmenter

__all__ = ["Segmenter"]
