import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segkn.cli import main
from segkn.data.io import read_mask
from segkn.engine.checkpoint import load_checkpoint
from segkn.engine.run_log import read_metrics
from segkn.inference import Segmenter
from tests.data.builders import make_cityscapes_tree
from tests.engine._configs import merge, tiny_dict, write_config
from tests.inference.conftest import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_train_then_eval_run_dir(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path))
    run = tmp_path / "out"
    assert (
        main(
            [
                "train",
                str(config),
                "--set",
                "train.iterations=2",
                "train.val_interval=2",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    assert "trained 2 iterations into" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pth")["step"] == 2

    assert (
        main(["eval", str(run), "--set", "eval.mode=slide", "eval.crop_size=[16,16]", "eval.flip=true"]) == 0
    )
    out = capsys.readouterr().out
    assert "mIoU" in out and "background" in out
    report = json.loads((run / "eval_val.json").read_text())
    assert report["mode"] == "slide" and report["flip"] is True and len(report["classes"]) == 5

    # resume a finished run with a longer schedule from the command line
    assert main(["train", "--resume", str(run), "--set", "train.iterations=3"]) == 0
    assert load_checkpoint(run / "last.pth")["step"] == 3
    last = [r for r in read_metrics(run) if r["kind"] == "train"][-1]
    assert last["step"] == 3 and last["lr"] > 0  # the longer schedule, not the finished one


def test_eval_config_with_checkpoint(tmp_path, capsys):
    config = write_config(
        tmp_path / "tiny.yaml", tiny_dict(tmp_path, train={"iterations": 1, "val_interval": 5})
    )
    assert main(["train", str(config)]) == 0
    checkpoint = tmp_path / "runs" / "run" / "last.pth"
    out = tmp_path / "reports"
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert json.loads((out / "eval_val.json").read_text())["checkpoint"] == str(checkpoint)


def test_bad_config_key_is_one_error_line(tmp_path, capsys):
    config = write_config(tmp_path / "bad.yaml", merge(tiny_dict(tmp_path), {"train": {"lrr": 0.1}}))
    assert main(["train", str(config)]) == 2
    assert "unknown key 'train.lrr'" in _error_line(capsys)
    good = write_config(tmp_path / "good.yaml", tiny_dict(tmp_path))
    assert main(["train", str(good), "--set", "model.archh=unet"]) == 2
    assert "model.archh" in _error_line(capsys)
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path))
    assert main(["eval", str(config), "--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth: checkpoint file not found" in _error_line(capsys)
    assert main(["eval", str(config)]) == 2
    assert "--checkpoint" in _error_line(capsys)
    assert main(["train", "--resume", str(tmp_path / "no-run")]) == 2
    assert "no-run" in _error_line(capsys)
    assert main(["train", str(config), "--init", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in _error_line(capsys)


def test_tools_wrapper_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "eval.py"),
            str(tmp_path / "missing.yaml"),
            "--checkpoint",
            "x.pth",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: config file not found"


def test_demo_config_runs(tmp_path, capsys):
    demo = ROOT / "configs" / "demo" / "shapes_unet_knresnet18_kn_2k_64x64.yaml"
    short = ["train.iterations=2", "train.warmup_iters=1", "data.shapes_val_length=2", "eval.batch_size=2"]
    assert main(["train", str(demo), "--set", *short, "--run-dir", str(tmp_path / "demo")]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out


def _readme_parameter_table() -> dict[tuple[str, str, str], tuple[int, int]]:
    """The README's zoo table: (arch, encoder, norm) -> (encoder params, total params)."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\w+)(?: \((\w+)\))? \| ([\d,]+) \| ([\d,]+) \|$", text, re.MULTILINE)
    assert len(rows) >= 8, "the README's parameter table moved"
    return {
        (arch, encoder, norm or "kn"): (int(enc.replace(",", "")), int(total.replace(",", "")))
        for arch, encoder, norm, enc, total in rows
    }


def test_zoo_prints_the_readme_parameter_table_and_runs_a_model(tmp_path, capsys):
    import cv2

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    assert main(["zoo", "--image", str(image), "--arch", "unet", "--encoder", "resnet18"]) == 0
    out = capsys.readouterr().out
    table = {
        (arch, encoder, norm): (int(enc.replace(",", "")), int(total.replace(",", "")))
        for arch, encoder, norm, enc, total in re.findall(
            r"^(\w+) +(\w+)/(\w+) +([\d,]+) +([\d,]+)$", out, re.MULTILINE
        )
    }
    assert len(table) == 18  # every arch x encoder
    for key, counts in _readme_parameter_table().items():
        assert table[key] == counts, key
    assert "model: unet / resnet18 (norm bn)" in out
    assert "logits: (1, 19, 45, 70); label map: (1, 45, 70)" in out


def test_eval_cityscapes_submission_end_to_end(tmp_path, capsys):
    root = make_cityscapes_tree(tmp_path / "cs", splits=("val", "test"), size=(40, 80))
    data = {"type": "cityscapes", "root": str(root), "normalize": "none", "eval_resize": [24, 48]}
    ckpt = write_tiny_checkpoint(tmp_path / "cs.pth", model={"num_classes": 19}, data=data)
    config = write_config(tmp_path / "cs.yaml", load_checkpoint(ckpt)["config"])
    out = tmp_path / "results"
    argv = ["eval", str(config), "--checkpoint", str(ckpt), "--split", "test"]
    assert main([*argv, "--cityscapes-submission", str(out)]) == 0
    assert f"wrote 4 labelIds PNGs to {out}" in capsys.readouterr().out
    images = sorted((root / "leftImg8bit" / "test").rglob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images)
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    for image in images:
        written = read_mask(out / image.name)
        assert written.shape == (40, 80)  # full resolution, though the model ran at 24 x 48
        np.testing.assert_array_equal(written, seg.to_dataset_ids(seg.predict(image)))
