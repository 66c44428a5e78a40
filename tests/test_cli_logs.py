"""Redirected output: no progress-bar frames, plain log lines instead (train, eval)."""

import io
import os
import subprocess
import sys
from pathlib import Path

from segkn.cli import main
from tests.engine._configs import tiny_dict, write_config

ROOT = Path(__file__).resolve().parents[1]


def _segkn(args: list[str], stderr_path: Path) -> subprocess.CompletedProcess:
    """``python -m segkn.cli ARGS`` with stderr redirected to a file, as under nohup or a cluster job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(stderr_path, "w") as err:
        return subprocess.run(
            [sys.executable, "-m", "segkn.cli", *args],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=300, cwd=ROOT,
        )  # fmt: skip


def test_redirected_train_and_eval_write_log_lines_not_bar_frames(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path, train={"log_interval": 2}))
    run = tmp_path / "run"
    train_err = tmp_path / "train.err"
    result = _segkn(["train", str(config), "--run-dir", str(run)], train_err)
    assert result.returncode == 0, train_err.read_text()
    text = train_err.read_text()
    assert "\r" not in text and "it/s]" not in text  # no tqdm frames
    lines = text.splitlines()
    progress = [line for line in lines if line.startswith("INFO iteration ")]
    assert [line.split()[2] for line in progress] == ["2/4", "4/4"]  # one line per train.log_interval
    assert "loss" in progress[0] and "img/s" in progress[0]
    assert any(line.startswith("INFO validation at iteration 4") for line in lines)

    eval_err = tmp_path / "eval.err"
    result = _segkn(["eval", str(run)], eval_err)
    assert result.returncode == 0, eval_err.read_text()
    assert "\r" not in eval_err.read_text() and "mIoU" in result.stdout


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_bars_show_unless_no_progress(tmp_path, monkeypatch, one_thread):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path, train={"iterations": 2}))
    frames = {}
    for flag in ([], ["--no-progress"]):
        terminal = _Terminal()
        monkeypatch.setattr("sys.stderr", terminal)
        run = tmp_path / f"run{len(flag)}"
        assert main(["train", str(config), "--run-dir", str(run), *flag]) == 0
        assert main(["eval", str(run), *flag]) == 0
        frames[bool(flag)] = terminal.getvalue()
    assert "\r" in frames[False] and "train: 100%" in frames[False]
    assert "\r" not in frames[True] and "it/s]" not in frames[True]
