import os
import subprocess
import sys
from pathlib import Path

import pytest

from segkn.config import ConfigError
from segkn.engine.run_lock import LOCK_FILE, RunDirectoryBusy, lock_run_dir

ROOT = Path(__file__).resolve().parents[2]


def test_the_lock_is_held_for_the_block_and_leaves_nothing(tmp_path):
    run = tmp_path / "runs" / "a"
    with lock_run_dir(run):
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirectoryBusy, match=rf"{run} is in use by another training process \(pid"):
            with lock_run_dir(run):
                pass
    assert not (tmp_path / "runs").exists()  # created for the run, left empty: removed
    run.mkdir(parents=True)
    with lock_run_dir(run):
        (run / "last.pth").write_bytes(b"x")
    assert [p.name for p in run.iterdir()] == ["last.pth"]
    assert issubclass(RunDirectoryBusy, ConfigError)  # the command line reports it in one line, exit 2


def test_another_process_is_refused_until_the_holder_is_gone(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n", str(run / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunDirectoryBusy, match=rf"\(pid {holder.pid}\)"):
            with lock_run_dir(run):
                pass
    finally:
        holder.kill()  # kill -9: the operating system lets go of its lock
        holder.wait()
    with lock_run_dir(run):
        pass


def test_stale_temp_files_of_the_run_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    names = [".last.pth.0123abcd.tmp", ".best.pth.89abcdef.tmp", ".config.yaml.00ff00ff.tmp"]
    kept = [".eval_val.json.0123abcd.tmp", ".last.pth.tmp", "notes.txt"]
    for name in names + kept:
        (run / name).write_bytes(b"half")
    with lock_run_dir(run):
        assert sorted(p.name for p in run.iterdir()) == sorted([*kept, LOCK_FILE])
