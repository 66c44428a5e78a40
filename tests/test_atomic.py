from pathlib import Path

import pytest

from segkn.atomic import atomic_open, temp_files


def test_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_open(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n"
    with atomic_open(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_refuses_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_temp_files_lists_the_temps_of_the_named_files_only(tmp_path):
    path = tmp_path / "last.pth"
    with pytest.raises(RuntimeError):
        with atomic_open(path, "wb") as f:
            (temp,) = temp_files(tmp_path, ["last.pth"])  # the write in progress
            assert Path(f.name) == temp and temp.name.startswith(".last.pth.") and temp.suffix == ".tmp"
            raise RuntimeError("stop")
    assert temp_files(tmp_path, ["last.pth"]) == []
    for name in (
        ".last.pth.0123abcd.tmp",
        ".best.pth.89abcdef.tmp",
        ".notes.txt.0123abcd.tmp",
        ".last.pth.x.tmp",
    ):
        (tmp_path / name).write_bytes(b"half")
    assert [p.name for p in temp_files(tmp_path, ["last.pth", "best.pth"])] == [
        ".best.pth.89abcdef.tmp",
        ".last.pth.0123abcd.tmp",
    ]
    assert temp_files(tmp_path / "missing", ["last.pth"]) == []
