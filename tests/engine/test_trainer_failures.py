"""What a run keeps when something goes wrong: bad files, Ctrl-C, SIGTERM, kill -9, a second process."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from segkn.cli import main
from segkn.data import DatasetError
from segkn.engine import trainer as trainer_module
from segkn.engine.checkpoint import load_checkpoint
from segkn.engine.run_log import read_metrics
from segkn.engine.trainer import TrainingTerminated, train
from tests.data.builders import make_folder_tree, write_label_png
from tests.inference.conftest import write_tiny_checkpoint

from ._configs import tiny_config, tiny_dict, write_config

ROOT = Path(__file__).resolve().parents[2]


def _folder_data(tmp_path: Path) -> tuple[Path, dict]:
    """A folder dataset (3 classes, 4 train and 4 val images of 32x32) and the config's data section."""
    root = make_folder_tree(tmp_path / "data", per_split=4, size=(32, 32))
    return root, {"type": "folder", "root": str(root), "crop_size": [24, 24]}


def _break_mask(path: Path, value: int = 7) -> None:
    """Give a mask a label outside the 3 classes."""
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[:4, :4] = value
    write_label_png(path, labels)


def _last_line(capsys) -> str:
    """The last line on stderr (progress bars end their lines with carriage returns), after no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Caught" not in err, err[-3000:]
    return re.split(r"[\r\n]+", err.strip())[-1]


def _steps(run: Path, kind: str = "train") -> list[int]:
    return [r["step"] for r in read_metrics(run) if r["kind"] == kind]


def _logged(run: Path) -> bool:
    """Whether a running training has logged an iteration (its metrics file may hold a half line)."""
    try:
        return bool(_steps(run))
    except ValueError:
        return False


# 1: a bad validation file costs no training


def test_a_bad_validation_mask_stops_the_run_before_it_trains(tmp_path):
    root, data = _folder_data(tmp_path)
    _break_mask(root / "masks" / "val" / "val_002.png")
    cfg = tiny_config(
        tmp_path, data=data, train={"iterations": 8, "val_interval": 4, "checkpoint_interval": 4}
    )
    with pytest.raises(DatasetError, match=r"val_002\.png has label values 7 outside the 3 classes"):
        train(cfg)
    assert _steps(cfg.run_path) == []  # found by the check at the start, not at iteration 4
    assert not cfg.run_path.exists()  # and nothing left behind


@contextmanager
def _mask_broken_at(monkeypatch, mask: Path, call: int):
    """Break ``mask`` in the middle of the run (after the check at the start), at train_step call ``call``."""
    step, calls = trainer_module.train_step, []

    def stepping(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            _break_mask(mask)
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", stepping)
    yield
    monkeypatch.setattr(trainer_module, "train_step", step)


def test_validation_runs_after_the_checkpoint_of_its_iteration(tmp_path, monkeypatch):
    root, data = _folder_data(tmp_path)
    cfg = tiny_config(
        tmp_path, data=data, train={"iterations": 8, "val_interval": 4, "checkpoint_interval": 4}
    )
    mask = root / "masks" / "val" / "val_002.png"
    with _mask_broken_at(monkeypatch, mask, 2):
        message = (
            r"val_002\.png has label values 7 .* \[validation at iteration 4 stopped the run; "
            r"\S+last\.pth holds iteration 4: continue with segkn train --resume \S+\]$"
        )
        with pytest.raises(DatasetError, match=message):
            train(cfg)
    assert load_checkpoint(cfg.run_path / "last.pth")["step"] == 4  # the 4 iterations are kept
    # fixed, the run continues from there and validates again at 4 before going on
    _break_mask(mask, value=1)
    assert train(cfg, run_dir=cfg.run_path, resume=True)["step"] == 8
    assert _steps(cfg.run_path) == list(range(1, 9)) and _steps(cfg.run_path, "val") == [4, 8]


def test_a_validation_failure_saves_the_iterations_since_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    root, data = _folder_data(tmp_path)
    sections = {"data": data, "train": {"iterations": 8, "val_interval": 2, "checkpoint_interval": 4}}
    config = write_config(tmp_path / "folder.yaml", tiny_dict(tmp_path, **sections))
    with _mask_broken_at(monkeypatch, root / "masks" / "val" / "val_002.png", 1):
        assert main(["train", str(config)]) == 2
    line = _last_line(capsys)
    assert line.startswith("error: mask ") and "label values 7" in line
    assert "[validation at iteration 2 stopped the run; " in line and "last.pth holds iteration 2" in line
    assert load_checkpoint(tmp_path / "runs" / "run" / "last.pth")["step"] == 2


# 2 and 3: one process per run directory; a crashed run never blocks --resume and leaves no temp files


def _start_training(config: Path, err: Path) -> subprocess.Popen:
    """``segkn train CONFIG`` in another process, its stderr into the file ``err``."""
    command = [sys.executable, str(ROOT / "tools" / "train.py"), str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(err, "w") as stderr:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _wait_for(condition, process: subprocess.Popen, err: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended early ({process.returncode}): {err.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training did not get going in time")
        time.sleep(0.1)


def _long_run(tmp_path: Path, checkpoint_interval: int) -> Path:
    sections = {
        "train": {"iterations": 1000, "val_interval": 1000, "checkpoint_interval": checkpoint_interval}
    }
    return write_config(tmp_path / "long.yaml", tiny_dict(tmp_path, "long", **sections))


@pytest.mark.slow
def test_a_second_training_in_a_running_run_directory_stops_at_once(tmp_path, capsys):
    config = _long_run(tmp_path, checkpoint_interval=1)
    run = tmp_path / "runs" / "long"
    first = _start_training(config, tmp_path / "first.err")
    try:
        _wait_for(lambda: (run / "last.pth").is_file(), first, tmp_path / "first.err")
        started = time.monotonic()
        assert main(["train", "--resume", str(run), "--stop-at", "3"]) == 2
        assert time.monotonic() - started < 10
        line = _last_line(capsys)
        assert line == (
            f"error: {run} is in use by another training process (pid {first.pid}); wait for it to end or "
            "stop it, or choose another --run-dir or name"
        )
    finally:
        first.kill()  # kill -9, possibly while it writes last.pth
        first.wait()
    # the lock went with the process: the run continues
    step = load_checkpoint(run / "last.pth")["step"]
    assert main(["train", "--resume", str(run), "--stop-at", str(step + 1)]) == 0
    assert load_checkpoint(run / "last.pth")["step"] == step + 1
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_resuming_removes_the_temp_files_that_a_killed_run_left(tmp_path):
    cfg = tiny_config(tmp_path, train={"iterations": 4})
    train(cfg, stop_at=2)
    run = cfg.run_path
    stale = [
        run / ".last.pth.0123abcd.tmp",
        run / ".best.pth.89abcdef.tmp",
        run / ".config.yaml.00ff00ff.tmp",
    ]
    other = run / ".eval_val.json.0123abcd.tmp"  # an evaluation's, which may be writing now: not the run's
    for path in [*stale, other]:
        path.write_bytes(b"\x00" * 1000)  # what kill -9 leaves in the middle of a write
    train(cfg, run_dir=run, resume=True)
    assert [p for p in stale if p.exists()] == []
    assert other.exists()


# 4: Ctrl-C and SIGTERM


class _InterruptedWrite:
    """A file whose third write is interrupted by Ctrl-C."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("during", ["checkpoint write", "step"])
def test_ctrl_c_ends_with_interrupted_and_keeps_last_pth(tmp_path, monkeypatch, capsys, during):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path, train={"iterations": 6}))
    run = tmp_path / "runs" / "run"
    if during == "checkpoint write":
        save = torch.save

        def saving(obj, f, *args, **kwargs):
            interrupted = isinstance(obj, dict) and obj.get("step") == 4 and "optimizer" in obj
            return save(obj, _InterruptedWrite(f) if interrupted else f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", saving)
    else:
        step = trainer_module.train_step
        calls = []

        def stepping(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return step(*args, **kwargs)

        monkeypatch.setattr(trainer_module, "train_step", stepping)
    assert main(["train", str(config)]) == 130
    assert _last_line(capsys) == "interrupted"
    assert load_checkpoint(run / "last.pth")["step"] == 2
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("name, step", [("last.pth", 4), ("best.pth", 2)])
def test_a_full_disk_is_one_error_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, caplog, name, step):
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path, train={"iterations": 6}))
    run = tmp_path / "runs" / "run"
    save = torch.save

    def saving(obj, f, *args, **kwargs):
        if obj.get("step") == step and ("optimizer" in obj) == (name == "last.pth"):
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", saving)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert err.strip().splitlines()[-1] == (
        f"error: cannot write {run / name}: No space left on device; the file was left as it was and "
        f"{run / 'last.pth'} holds iteration 2 "
        f"(free some space, then continue with segkn train --resume {run})"
    )
    assert load_checkpoint(run / "last.pth")["step"] == 2
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(torch, "save", save)  # space freed
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "last.pth")["step"] == 6 and (run / "best.pth").is_file()


@contextmanager
def _sigterm_guard():
    """Make a SIGTERM that reaches the test process fail the test instead of ending it."""

    def unexpected(signum, frame):
        raise AssertionError("SIGTERM was not handled by the training")

    previous = signal.signal(signal.SIGTERM, unexpected)
    try:
        yield unexpected
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_saves_the_finished_steps_and_ends_the_run(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train={"iterations": 8, "val_interval": 8, "checkpoint_interval": 8})
    step, calls = trainer_module.train_step, []

    def stepping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the third step
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", stepping)
    with _sigterm_guard() as guard:
        with pytest.raises(
            TrainingTerminated, match=r"terminated \(SIGTERM\) at iteration 3 of 8; .*--resume"
        ):
            train(cfg)
        assert signal.getsignal(signal.SIGTERM) is guard  # the run's handler is gone with the run
    assert load_checkpoint(cfg.run_path / "last.pth")["step"] == 3
    assert _steps(cfg.run_path) == [1, 2, 3]


def test_sigterm_during_validation_stops_it_and_saves(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train={"iterations": 8, "val_interval": 3, "checkpoint_interval": 8})
    evaluate = trainer_module.evaluate

    def evaluating(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", evaluating)
    with _sigterm_guard():
        with pytest.raises(TrainingTerminated, match=r"at iteration 3 of 8"):
            train(cfg)
    assert load_checkpoint(cfg.run_path / "last.pth")["step"] == 3
    assert _steps(cfg.run_path, "val") == []  # the stopped validation is not recorded


def test_a_validation_cut_short_runs_on_resume_and_the_run_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    """last.pth is written before validating: a run killed while validating validates first on resume."""
    section = {"iterations": 4, "val_interval": 2, "checkpoint_interval": 2}
    whole = tiny_config(tmp_path, name="whole", train=section)
    train(whole)
    cut = tiny_config(tmp_path, name="cut", train=section)
    evaluate = trainer_module.evaluate

    def killed(*args, **kwargs):  # as kill -9 during the validation at iteration 2: nothing saved after it
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    assert load_checkpoint(cut.run_path / "last.pth")["step"] == 2 and _steps(cut.run_path, "val") == []
    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    train(cut, run_dir=cut.run_path, resume=True)
    assert _steps(cut.run_path, "val") == _steps(whole.run_path, "val") == [2, 4]
    scores = [{k: v for k, v in r.items()} for r in read_metrics(whole.run_path) if r["kind"] == "val"]
    assert [r for r in read_metrics(cut.run_path) if r["kind"] == "val"] == scores
    assert "the validation at iteration 2 did not finish" in (cut.run_path / "train.log").read_text()
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(cut.run_path / name), load_checkpoint(whole.run_path / name)
        assert a["step"] == b["step"] and a["best"] == b["best"], name
        for key, value in b["model"].items():
            torch.testing.assert_close(a["model"][key], value, rtol=0, atol=0, msg=f"{name}: {key}")
    # a resume after a finished validation does not repeat it
    train(cut, run_dir=cut.run_path, resume=True)
    assert _steps(cut.run_path, "val") == [2, 4]


@pytest.mark.parametrize("point", ["before last.pth holds the new best", "before the scores are recorded"])
def test_a_kill_after_a_new_best_loses_nothing_on_resume(tmp_path, monkeypatch, point):
    """At a new best, best.pth and then last.pth (again) are written before the scores are recorded: a run
    killed in between validates again on resume and keeps its best, as an uninterrupted run does."""
    section = {"iterations": 4, "val_interval": 2, "checkpoint_interval": 2}
    whole = tiny_config(tmp_path, name="whole", train=section)
    train(whole)
    cut = tiny_config(tmp_path, name="cut", train=section)
    save, record = torch.save, trainer_module.RunLog.record
    writes = []

    def saving(obj, f, *args, **kwargs):  # at iteration 2: last.pth, best.pth, last.pth with the best
        writes.append(obj["step"])
        if point.startswith("before last.pth") and writes == [2, 2, 2]:
            raise KeyboardInterrupt  # as kill -9 before the write
        return save(obj, f, *args, **kwargs)

    def recording(self, kind, step, **values):
        if point.startswith("before the scores") and kind == "val":
            raise KeyboardInterrupt
        return record(self, kind, step, **values)

    monkeypatch.setattr(torch, "save", saving)
    monkeypatch.setattr(trainer_module.RunLog, "record", recording)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    assert _steps(cut.run_path, "val") == [] and load_checkpoint(cut.run_path / "best.pth")["step"] == 2
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(trainer_module.RunLog, "record", record)
    first = next(r["miou"] for r in read_metrics(whole.run_path) if r["kind"] == "val" and r["step"] == 2)
    assert train(cut, run_dir=cut.run_path, resume=True, stop_at=2)["best"] == {"miou": first, "step": 2}
    assert "the validation at iteration 2 did not finish" in (cut.run_path / "train.log").read_text()
    train(cut, run_dir=cut.run_path, resume=True)
    assert _steps(cut.run_path, "val") == _steps(whole.run_path, "val") == [2, 4]
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(cut.run_path / name), load_checkpoint(whole.run_path / name)
        assert a["step"] == b["step"] and a["best"] == b["best"], name


@pytest.mark.slow
def test_sigterm_to_segkn_train_saves_exits_143_and_resume_continues(tmp_path):
    config = _long_run(tmp_path, checkpoint_interval=1000)
    run = tmp_path / "runs" / "long"
    process = _start_training(config, tmp_path / "train.err")
    _wait_for(lambda: _logged(run), process, tmp_path / "train.err")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    err = (tmp_path / "train.err").read_text()
    assert process.returncode == 143, err[-3000:]
    last = re.split(r"[\r\n]+", err.strip())[-1]
    match = re.fullmatch(
        rf"terminated \(SIGTERM\) at iteration (\d+) of 1000; {re.escape(str(run / 'last.pth'))} holds it: "
        rf"continue with segkn train --resume {re.escape(str(run))}",
        last,
    )
    assert match, err[-3000:]
    step = int(match[1])
    assert load_checkpoint(run / "last.pth")["step"] == step and _steps(run) == list(range(1, step + 1))
    assert main(["train", "--resume", str(run), "--stop-at", str(step + 2)]) == 0
    assert load_checkpoint(run / "last.pth")["step"] == step + 2
    assert _steps(run) == list(range(1, step + 3))


# 12: with loader workers a bad file is the same one-line error as without


def test_a_bad_training_file_is_one_error_line_with_loader_workers(tmp_path, capsys):
    root, data = _folder_data(tmp_path)
    for mask in (root / "masks" / "train").iterdir():
        _break_mask(mask)
    lines = []
    for workers in (0, 2):
        sections = {"data": {**data, "num_workers": workers}, "train": {"iterations": 2}}
        config = write_config(tmp_path / f"w{workers}.yaml", tiny_dict(tmp_path, f"w{workers}", **sections))
        assert main(["train", str(config)]) == 2
        lines.append(_last_line(capsys))
    assert lines[0].startswith("error: mask ") and "label values 7" in lines[0]
    assert lines[1] == lines[0]


def test_a_bad_evaluation_file_is_one_error_line_with_loader_workers(tmp_path, capsys):
    root, data = _folder_data(tmp_path)
    checkpoint = write_tiny_checkpoint(tmp_path / "folder.pth", data=data)
    _break_mask(root / "masks" / "val" / "val_002.png")
    lines = []
    for workers in (0, 2):
        config = write_config(
            tmp_path / f"w{workers}.yaml", tiny_dict(tmp_path, data={**data, "num_workers": workers})
        )
        assert main(["eval", str(config), "--checkpoint", str(checkpoint)]) == 2
        lines.append(_last_line(capsys))
    assert lines[0].startswith("error: mask ") and "val_002.png has label values 7" in lines[0]
    assert lines[1] == lines[0]
