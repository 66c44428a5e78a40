"""Pictures: the evaluation's confusion heat map and IoU bars (segkn eval), and training curves."""

import json
import logging
import sys

import cv2
import numpy as np
import pytest

from segkn.cli import main
from segkn.config import load_config
from segkn.engine.checkpoint import model_from_checkpoint
from segkn.engine.evaluator import evaluate
from segkn.engine.loaders import build_split
from segkn.engine.plots import VIZ_HINT, MissingExtra, confusion_png, eval_plot_paths
from tests.engine._configs import tiny_dict, write_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (2 iterations, validated at the end)."""
    tmp = tmp_path_factory.mktemp("plots")
    config = write_config(tmp / "tiny.yaml", tiny_dict(tmp, train={"iterations": 2}))
    run = tmp / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    return run


def _without_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of these now raises ImportError


def test_eval_json_holds_the_metrics_confusion_matrix(run_dir, capsys):
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    report = json.loads((run_dir / "eval_val.json").read_text())
    cfg = load_config(run_dir / "config.yaml")
    model, _ = model_from_checkpoint(run_dir / "best.pth")
    cm = evaluate(model, build_split(cfg, "val", train=False), 5, progress=False)
    assert report["confusion_matrix"] == cm.mat.tolist()
    assert np.sum(report["confusion_matrix"]) == report["pixels"] == 3 * 32 * 32
    # one matrix row per line keeps the file readable for many classes
    text = (run_dir / "eval_val.json").read_text()
    assert f"    {json.dumps(report['confusion_matrix'][0])}," in text.splitlines()


def test_eval_writes_the_confusion_heat_map_and_iou_bars(run_dir, capsys):
    paths = eval_plot_paths(run_dir / "eval_val.json")
    for path in paths.values():
        path.unlink(missing_ok=True)
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    confusion, iou = (cv2.imread(str(paths[key])) for key in ("confusion", "iou"))
    assert paths["confusion"].name == "eval_val_confusion.png" and paths["iou"].name == "eval_val_iou.png"
    assert confusion is not None and iou is not None  # both decode
    assert 400 <= confusion.shape[0] <= 1200 and 400 <= confusion.shape[1] <= 1400
    assert 200 <= iou.shape[0] <= 800 and iou.shape[1] == 700
    assert not list(run_dir.glob(".*.tmp"))  # written atomically: no temp file left


def test_confusion_heat_map_is_normalized_per_ground_truth_row(tmp_path):
    # class 0: all right; class 1: half predicted as 0; class 2: no ground truth (grey row)
    counts = np.array([[100, 0, 0], [5, 5, 0], [0, 0, 0]])
    path = confusion_png(counts, ["a", "b", "c"], tmp_path / "cm.png")
    image = cv2.imread(str(path))
    from segkn.engine.plots import _normalized_rows

    norm = _normalized_rows(counts)
    assert norm[0].tolist() == [1.0, 0.0, 0.0] and norm[1].tolist() == [0.5, 0.5, 0.0]
    assert np.isnan(norm[2]).all()
    assert image is not None and image.shape[:2] == (500, 620)


def test_eval_without_matplotlib_warns_with_the_install_line(run_dir, capsys, monkeypatch, caplog):
    _without_matplotlib(monkeypatch)
    (run_dir / "eval_val.json").unlink()
    with pytest.raises(MissingExtra, match="segkn\\[viz\\]"):
        confusion_png(np.eye(2), ["a", "b"], run_dir / "x.png")
    with caplog.at_level(logging.WARNING, logger="segkn"):
        assert main(["eval", str(run_dir), "--no-progress"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith(VIZ_HINT) and "\n" not in warnings[0]
    assert VIZ_HINT == 'matplotlib is not installed: pip install "segkn[viz]"'
    assert (run_dir / "eval_val.json").is_file()  # the scores are written all the same


def test_plot_draws_the_runs_curves(run_dir, capsys):
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"curves: {run_dir / 'curves.png'}"
    image = cv2.imread(str(run_dir / "curves.png"))
    assert image is not None and image.shape[:2] == (800, 700)
    out = run_dir / "pictures" / "c.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert cv2.imread(str(out)) is not None


def test_plot_without_metrics_or_matplotlib_is_one_error_line(tmp_path, run_dir, capsys, monkeypatch):
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'metrics.jsonl'}: not found (is {tmp_path} a run directory?)"
    )
    _without_matplotlib(monkeypatch)
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "c.png")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {VIZ_HINT}"
    assert not (tmp_path / "c.png").exists()
