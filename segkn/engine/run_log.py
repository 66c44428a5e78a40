"""A run's records: metrics.jsonl (one JSON object per event), TensorBoard events and train.log."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LogWindow", "RunLog", "has_record", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl, in order (empty if there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def has_record(run_dir: str | Path, kind: str, step: int) -> bool:
    """Whether the run's metrics.jsonl holds a record of ``kind`` ("train", "val") at ``step``."""
    return any(r["kind"] == kind and r["step"] == step for r in read_metrics(run_dir))


@dataclass
class LogWindow:
    """The training loss and time since the last log line."""

    loss: float = 0.0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)


class RunLog:
    """Writes records to ``metrics.jsonl`` and TensorBoard, and copies segkn's log lines to ``train.log``.

    ``resume_step`` drops records written after that step by an earlier, interrupted process, so the
    files describe one consistent history. Use as a context manager (or call ``close``).
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a run starts

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        if resume_step is not None and path.is_file():
            kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        elif resume_step is None:
            path.unlink(missing_ok=True)
        self._metrics = open(path, "a", encoding="utf-8")
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        self._handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler.setLevel(logging.INFO)
        self._logger = logging.getLogger("segkn")
        self._old_level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)

    def record(self, kind: str, step: int, **values: Any) -> None:
        """Append one record (``kind`` is e.g. train or val) and its numbers as TensorBoard scalars."""
        row = {"kind": kind, "step": step}
        for key, value in values.items():
            row[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the files and detach the log handler."""
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old_level)
        self._handler.close()
        self.writer.close()
        self._metrics.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
