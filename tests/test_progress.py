import io
import logging

from tqdm import tqdm

from segkn import progress as progress_module
from segkn.progress import LogLines, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress_bar(range(3), desc="eval", file=terminal)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert "\r" in terminal.getvalue()


def test_off_a_terminal_log_lines_replace_the_bar(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = progress_bar(range(4), desc="eval", unit="batch", every=0.0)
    assert isinstance(bar, LogLines)
    with caplog.at_level(logging.INFO, logger="segkn.progress"):
        assert list(bar) == [0, 1, 2, 3]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and messages[-1].startswith("eval 4/4 (100%, ") and "batch/s" in messages[-1]


def test_log_lines_are_spaced_in_time(monkeypatch, caplog):
    clock = iter([0.0, 1.0, 31.0, 32.0, 70.0])  # start, then one reading per update
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar = LogLines(total=100, desc="infer", unit="img", initial=10)
    with caplog.at_level(logging.INFO, logger="segkn.progress"):
        for _ in range(4):
            bar.update(5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["infer 20/100 (20%, 0.323 img/s)", "infer 30/100 (30%, 0.286 img/s)"]


def test_disabled_or_self_logging_callers_get_no_lines(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", _Terminal())
    with caplog.at_level(logging.INFO, logger="segkn.progress"):
        for kwargs in ({"enabled": False}, {"disable": True}):
            bar = progress_bar(range(3), every=0.0, **kwargs)
            assert isinstance(bar, LogLines) and list(bar) == [0, 1, 2]
        monkeypatch.setattr("sys.stderr", io.StringIO())
        bar = progress_bar(total=3, lines=False, every=0.0)
        bar.update(3)
        bar.set_postfix(loss="0.1")
    assert caplog.records == []
