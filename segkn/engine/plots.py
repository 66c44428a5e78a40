"""Pictures of results: the confusion matrix and per-class IoU of an evaluation, a run's training curves.

Drawn with matplotlib (the optional ``viz`` extra) through its object interface, never pyplot: no
global backend or figure state changes in the user's process. Every PNG is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkn.atomic import atomic_open

__all__ = [
    "VIZ_HINT",
    "MissingExtra",
    "confusion_png",
    "curves_png",
    "eval_plot_paths",
    "iou_png",
    "write_eval_plots",
]

VIZ_HINT = 'matplotlib is not installed: pip install "segkn[viz]"'


class MissingExtra(ImportError):
    """An optional dependency is missing; the message says how to install it."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra(VIZ_HINT) from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


def _normalized_rows(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows = ground truth); NaN for a class with no ground-truth pixels."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def confusion_png(counts: Any, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A heat map of the confusion matrix normalized per row: row = ground truth, column = prediction.

    Each cell is the share of a class's pixels predicted as the column's class (the diagonal is the
    class accuracy); with up to 30 classes the cells carry their percentages. A class without
    ground-truth pixels is a grey row.
    """
    norm = _normalized_rows(counts)
    n = len(classes)
    assert norm.shape == (n, n), "one row and one column per class"
    side = min(max(5.0, 0.32 * n + 2.5), 32.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    cmap = _cmap("Blues")
    image = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the ground-truth class's pixels")
    font = max(4.0, min(9.0, 0.55 * 72 * 0.75 * side / n))  # in points: about half a cell
    ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "confusion matrix (rows normalized)")
    if n <= 30:
        for i, j in np.ndindex(n, n):
            if not math.isnan(norm[i, j]) and norm[i, j] >= 0.005:
                colour = "white" if norm[i, j] > 0.6 else "black"
                ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour)
    return _save(fig, path)


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#d9d9d9")  # grey: a class without ground truth


def iou_png(
    report: Mapping[str, Any],
    path: str | Path,
    palette: Sequence[Sequence[int]] = (),
    title: str = "",
) -> Path:
    """Horizontal bars of each class's IoU (%) in its palette colour, and a line at the mIoU.

    ``report`` is `metrics_report`'s: its ``classes`` (name, iou) and ``miou``. A class absent from
    ground truth and prediction has no bar and says n/a.
    """
    classes = report["classes"]
    n = len(classes)
    fig = _figure(7.0, min(max(2.5, 0.28 * n + 1.2), 45.0))
    ax = fig.add_subplot()
    values = [100 * c["iou"] if c["iou"] is not None else 0.0 for c in classes]
    colours = [
        tuple(v / 255 for v in palette[i]) if i < len(palette) else "tab:blue" for i in range(n)
    ]  # fmt: skip
    ax.barh(range(n), values, color=colours, edgecolor="black", linewidth=0.5)
    font = 9 if n <= 30 else 7
    ax.set_yticks(range(n), [c["name"] for c in classes], fontsize=font)
    ax.set_ylim(n - 0.5, -0.5)  # the first class on top, as in the table
    for i, c in enumerate(classes):
        text = f"{100 * c['iou']:.1f}" if c["iou"] is not None else "n/a"
        ax.text(
            values[i] + 1, i, text, va="center", fontsize=font - 1,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
        )  # fmt: skip
    if report.get("miou") is not None:
        miou = 100 * report["miou"]
        ax.axvline(miou, color="black", linestyle="--", linewidth=1)
        ax.text(miou, 1.0, f" mIoU {miou:.1f}", va="bottom", fontsize=9, transform=ax.get_xaxis_transform())
    ax.set_xlim(0, 110)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title or "per-class IoU", pad=18)
    return _save(fig, path)


def eval_plot_paths(json_path: str | Path) -> dict[str, Path]:
    """Where `write_eval_plots` puts the pictures of ``eval_<split>.json``: beside it, same stem."""
    json_path = Path(json_path)
    return {
        "confusion": json_path.with_name(f"{json_path.stem}_confusion.png"),
        "iou": json_path.with_name(f"{json_path.stem}_iou.png"),
    }


def write_eval_plots(
    report: Mapping[str, Any], json_path: str | Path, palette: Sequence[Sequence[int]] = ()
) -> dict[str, Path]:
    """The confusion heat map and IoU bars of an evaluation ``report`` beside its JSON; MissingExtra
    without matplotlib."""
    paths = eval_plot_paths(json_path)
    names = [c["name"] for c in report["classes"]]
    what = " ".join(str(report[k]) for k in ("dataset", "split") if report.get(k) is not None)
    confusion_png(
        report["confusion_matrix"], names, paths["confusion"], f"confusion matrix {what} (rows normalized)"
    )
    iou_png(report, paths["iou"], palette, f"per-class IoU {what}")
    return paths


def _series(records: Sequence[Mapping[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def curves_png(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss, learning rate and val mIoU against the iteration, from metrics.jsonl ``records``."""
    fig = _figure(7.0, 8.0)
    axes = fig.subplots(3, 1, sharex=True)
    panels = [
        ("train", "loss", "training loss", "tab:blue", False),
        ("train", "lr", "learning rate", "tab:orange", False),
        ("val", "miou", "val mIoU (%)", "tab:green", True),
    ]
    for ax, (kind, key, label, colour, percent) in zip(axes, panels, strict=True):
        steps, values = _series(records, kind, key)
        if percent:
            values = [100 * v for v in values]
        if steps:
            ax.plot(steps, values, color=colour, marker="o" if len(steps) <= 30 else None, markersize=3)
        else:
            ax.text(0.5, 0.5, f"no {label} recorded yet", ha="center", va="center", transform=ax.transAxes)
        if percent and steps:
            best = int(np.argmax(values))
            ax.annotate(
                f"best {values[best]:.1f} at {steps[best]}", (steps[best], values[best]),
                textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8,
            )  # fmt: skip
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    axes[0].set_title(title or "training curves")
    return _save(fig, path)
