"""Verification of ONNX exports: test images, default sizes, reports, and failing a changed model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segkn.inference.verify import (
    ImageRecord,
    VerificationReport,
    default_verify_sizes,
    eval_mode,
    verification_image,
    verify_onnx,
)
from tests.inference.conftest import SAMPLE


@pytest.mark.parametrize(
    ("sample", "divisor"), [((64, 96), 32), ((512, 1024), 32), ((33, 7), 16), ((8, 8), 8)]
)
def test_default_verify_sizes(sample, divisor) -> None:
    sizes = default_verify_sizes(sample, divisor)
    assert len(sizes) >= 3 and sizes[0] == sample
    off_grid = [s for s in sizes if all(v % 32 and v % divisor for v in s)]
    assert off_grid, sizes
    assert any(h > sample[0] and w > sample[1] for h, w in sizes)


def test_verification_image_is_deterministic_and_structured() -> None:
    a, b = verification_image(40, 56, seed=3), verification_image(40, 56, seed=3)
    assert a.dtype == np.uint8 and a.shape == (40, 56, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, verification_image(40, 56, seed=4))
    # structure, not noise: neighbouring pixels are close far more often than not
    steps = np.abs(np.diff(a.astype(int), axis=1)).mean(axis=-1)
    assert np.median(steps) < 20 and a.std() > 30


def test_report_passes_only_when_every_record_does() -> None:
    report = VerificationReport(Path("m.onnx"), "float32", 1e-3, 0.999)
    assert not report.passed and math.isnan(report.max_abs_diff)  # nothing checked is no pass
    report.records += [
        ImageRecord((8, 8), 0, 1e-4, 1.0, True, 2.0),
        ImageRecord((8, 8), 1, 2e-4, 1.0, True, 2.0),
        ImageRecord((9, 7), 0, 5e-3, 0.99, False, 2.0),
    ]
    assert not report.passed and report.sizes == [(8, 8), (9, 7)]
    assert report.max_abs_diff == 5e-3 and report.worst_agreement == 0.99
    table = report.table()
    assert "9x7" in table and table.splitlines()[-1] == "FAILED"
    as_dict = report.to_dict()
    assert as_dict["passed"] is False and as_dict["records"][2]["size"] == (9, 7)


def test_eval_mode_restores_the_training_flag() -> None:
    model = torch.nn.Dropout().train()
    with eval_mode(model):
        assert not model.training
    assert model.training


def test_verification_fails_for_a_changed_model(shared, one_thread) -> None:
    model, path = shared
    sizes = default_verify_sizes(SAMPLE, model.size_divisor)
    assert verify_onnx(model, path, sizes).passed
    head_bias = [
        p for name, p in model.named_parameters() if name.startswith("head") and name.endswith("bias")
    ]
    with torch.no_grad():
        head_bias[-1][1] += 0.5  # class 1 now wins more often, and every logit of it moves by 0.5
    try:
        report = verify_onnx(model, path, sizes)
    finally:
        with torch.no_grad():
            head_bias[-1][1] -= 0.5
    assert not report.passed
    assert report.max_abs_diff == pytest.approx(0.5, abs=1e-3)
    assert "FAILED" in report.table()
    # a bound that the file cannot meet fails too
    assert not verify_onnx(model, path, sizes[:1], atol=0.0).passed
