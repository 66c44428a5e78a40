"""Segmenting image files: collect them from files, folders and globs; write label maps, masks, overlays."""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segkn.data.errors import DatasetError
from segkn.data.io import IMAGE_SUFFIXES, read_image, write_png
from segkn.inference.predictor import Segmenter
from segkn.inference.visualize import colorize, overlay
from segkn.models.prediction import same_size_batches
from segkn.progress import progress_bar

__all__ = ["IMAGE_SUFFIXES", "OUTPUTS", "InferenceSummary", "collect_images", "segment_files"]

log = logging.getLogger(__name__)

OUTPUTS = ("label", "color", "overlay")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _glob_base(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading parts without wildcards."""
    parts = Path(pattern).parts
    lead = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*lead) if lead else Path(".")


def collect_images(inputs: Sequence[str | Path], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """``(image file, output name)`` pairs for image files, folders (searched recursively) and globs.

    The output name keeps the image's path below the folder or the glob's fixed leading folders, with
    the suffix ``.png``; a file named directly keeps its name. Files under ``exclude`` (the output
    folder) are skipped. Raises FileNotFoundError for an input that names nothing, and ValueError when
    two images would write the same output.
    """
    found: list[tuple[Path, Path]] = []
    skip = exclude.resolve() if exclude is not None else None

    def wanted(path: Path) -> bool:
        return skip is None or not path.resolve().is_relative_to(skip)

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p) and wanted(p))
            if not files:
                log.warning("%s: no images (%s) in this folder", path, ", ".join(IMAGE_SUFFIXES))
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(text):
            base = _glob_base(text)
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file() and _is_image(p) and wanted(p)]
            if not files:
                raise FileNotFoundError(f"{text}: the pattern matches no image files")
            found += [(p, p.relative_to(base)) for p in files]
        else:
            raise FileNotFoundError(f"{text}: no such image file or folder")
    if not found:
        raise FileNotFoundError(f"no images found in {', '.join(str(i) for i in inputs)}")
    by_output: dict[Path, Path] = {}
    pairs = []
    for source, name in found:
        out = name.with_suffix(".png")
        if out in by_output:
            if by_output[out].resolve() == source.resolve():
                continue  # the same file named twice
            raise ValueError(
                f"{by_output[out]} and {source} would both be written as {out}; segment them in separate "
                "runs or name their common parent folder instead"
            )
        by_output[out] = source
        pairs.append((source, out))
    return pairs


@dataclass
class InferenceSummary:
    """What ``segment_files`` did: images written, images that failed (with the reason), and time."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        done = len(self.written)
        rate = f", {1000 * self.seconds / done:.0f} ms per image" if done else ""
        lines = [f"segmented {done} image(s) in {self.seconds:.1f} s{rate}"]
        if self.failed:
            lines.append(f"{len(self.failed)} image(s) could not be read and were skipped:")
            lines += [f"  {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def _readable(
    pairs: Sequence[tuple[Path, Path]], summary: InferenceSummary
) -> Iterator[tuple[Path, Path, np.ndarray]]:
    """The images of ``pairs`` read in order; unreadable ones are logged and go to ``summary``."""
    for source, name in pairs:
        try:
            yield source, name, read_image(source)
        except DatasetError as err:
            log.warning("skipped %s", err)
            summary.failed.append((source, str(err)))


def _batches(
    pairs: Sequence[tuple[Path, Path]], batch_size: int, summary: InferenceSummary
) -> Iterator[list[tuple[Path, Path, np.ndarray]]]:
    """Read images in order and group consecutive ones of one size; unreadable ones go to ``summary``."""
    return same_size_batches(_readable(pairs, summary), lambda item: item[2].shape, batch_size)


def segment_files(
    segmenter: Segmenter,
    pairs: Sequence[tuple[Path, Path]],
    out_dir: str | Path,
    save: Sequence[str] = OUTPUTS,
    ids: str = "train",
    batch_size: int = 1,
    alpha: float = 0.5,
    progress: bool = True,
) -> InferenceSummary:
    """Segment each ``(image, output name)``, writing ``out_dir/<kind>/<output name>`` per kind in ``save``.

    ``label`` is the label map (train ids, or with ``ids="dataset"`` the dataset's own ids such as
    Cityscapes labelIds), ``color`` the colour mask in the model's palette, ``overlay`` the colour mask
    blended over the image. Every file is written atomically; an unreadable image is reported and skipped.
    """
    unknown = sorted(set(save) - set(OUTPUTS))
    if unknown or not save:
        raise ValueError(f"save: choose from {', '.join(OUTPUTS)}, got {', '.join(save) or 'nothing'}")
    if ids not in ("train", "dataset"):
        raise ValueError(f"ids: expected train or dataset, got {ids!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    summary = InferenceSummary()
    start = time.perf_counter()
    with progress_bar(total=len(pairs), desc="infer", unit="img", enabled=progress) as bar:
        for batch in _batches(pairs, batch_size, summary):
            labels = segmenter.predict_batch([image for _, _, image in batch], batch_size=len(batch))
            for (source, name, image), label in zip(batch, labels, strict=True):
                if "label" in save:
                    ids_map = segmenter.to_dataset_ids(label) if ids == "dataset" else label
                    write_png(out_dir / "label" / name, ids_map)
                if "color" in save:
                    write_png(out_dir / "color" / name, colorize(label, segmenter.palette))
                if "overlay" in save:
                    write_png(out_dir / "overlay" / name, overlay(image, label, segmenter.palette, alpha))
                summary.written.append(source)
            bar.update(len(summary.written) + len(summary.failed) - bar.n)
        bar.update(len(summary.written) + len(summary.failed) - bar.n)
    summary.seconds = time.perf_counter() - start
    return summary
