"""Segmenting image and video files: collect them from files, folders and globs; write label maps, masks,
overlays (for videos, see segkn.inference.video)."""

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
from segkn.inference.video import (
    OUTPUTS,
    VIDEO_DEFAULT_OUTPUTS,
    VIDEO_SUFFIXES,
    VideoResult,
    is_video,
    segment_video,
)
from segkn.inference.visualize import colorize, overlay
from segkn.models.prediction import same_size_batches
from segkn.progress import progress_bar

__all__ = [
    "IMAGE_SUFFIXES",
    "OUTPUTS",
    "VIDEO_DEFAULT_OUTPUTS",
    "VIDEO_SUFFIXES",
    "InferenceSummary",
    "collect_inputs",
    "segment_files",
]

log = logging.getLogger(__name__)


def _is_input(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or is_video(path)


def _output_name(name: Path) -> Path:
    """Where an input's outputs go: ``<name>.png`` for an image, ``<name>`` (a stem) for a video."""
    return name.with_suffix("") if is_video(name) else name.with_suffix(".png")


def _glob_base(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading parts without wildcards."""
    parts = Path(pattern).parts
    lead = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*lead) if lead else Path(".")


def collect_inputs(inputs: Sequence[str | Path], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """``(file, output name)`` pairs for image and video files, folders (searched recursively) and globs.

    The output name keeps the file's path below the folder or the glob's fixed leading folders, with
    the suffix ``.png`` for an image and none for a video (``clips/a.mp4`` -> ``clips/a``); a file named
    directly keeps its name. Files under ``exclude`` (the output folder) are skipped. Raises
    FileNotFoundError for an input that names nothing, and ValueError when two inputs would write the
    same output.
    """
    found: list[tuple[Path, Path]] = []
    skip = exclude.resolve() if exclude is not None else None

    def wanted(path: Path) -> bool:
        return skip is None or not path.resolve().is_relative_to(skip)

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_input(p) and wanted(p))
            if not files:
                suffixes = ", ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
                log.warning("%s: no images or videos (%s) in this folder", path, suffixes)
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(text):
            base = _glob_base(text)
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file() and _is_input(p) and wanted(p)]
            if not files:
                raise FileNotFoundError(f"{text}: the pattern matches no image or video files")
            found += [(p, p.relative_to(base)) for p in files]
        else:
            raise FileNotFoundError(f"{text}: no such image or video file or folder")
    if not found:
        raise FileNotFoundError(f"no images or videos found in {', '.join(str(i) for i in inputs)}")
    by_output: dict[Path, Path] = {}
    pairs = []
    for source, name in found:
        out = _output_name(name)
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
    """What ``segment_files`` did: images and videos written, inputs that failed (with the reason),
    the output folders it wrote into, and time."""

    written: list[Path] = field(default_factory=list)
    videos: list[VideoResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    video_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every input was read whole: none failed and no video ended before its header said."""
        return not self.failed and not any(video.ended_early for video in self.videos)

    def text(self) -> str:
        images, frames = len(self.written), sum(video.frames for video in self.videos)
        failed_images = [(p, r) for p, r in self.failed if not is_video(p)]
        failed_videos = [(p, r) for p, r in self.failed if is_video(p)]
        lines = []
        if images or failed_images or not (self.videos or failed_videos):
            seconds = self.seconds - self.video_seconds
            rate = f", {1000 * seconds / images:.0f} ms per image" if images else ""
            lines.append(f"segmented {images} image(s) in {seconds:.1f} s{rate}")
        if self.videos or failed_videos:
            rate = f", {1000 * self.video_seconds / frames:.0f} ms per frame" if frames else ""
            lines.append(
                f"segmented {len(self.videos)} video(s), {frames} frame(s) "
                f"in {self.video_seconds:.1f} s{rate}"
            )
        for what, failed in (("image", failed_images), ("video", failed_videos)):
            if failed:
                lines.append(f"{len(failed)} {what}(s) could not be read and were skipped:")
                lines += [f"  {path}: {reason}" for path, reason in failed]
        early = [video for video in self.videos if video.ended_early]
        if early:
            lines.append(f"{len(early)} video(s) ended early; what was read is written:")
            lines += [f"  {video.note()}" for video in early]
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
    save: Sequence[str] | None = None,
    ids: str = "train",
    batch_size: int = 1,
    alpha: float = 0.5,
    progress: bool = True,
    every: int = 1,
) -> InferenceSummary:
    """Segment each ``(file, output name)``, writing ``out_dir/<kind>/<output name>`` per kind in ``save``.

    For an image, ``label`` is the label map (train ids, or with ``ids="dataset"`` the dataset's own ids
    such as Cityscapes labelIds), ``color`` the colour mask in the model's palette, ``overlay`` the colour
    mask blended over the image; ``save`` defaults to all three. A video (see `segment_video`) gets a
    label map per frame and colour-mask and overlay videos, every ``every``-th frame; ``save`` defaults
    to the overlay video. Every file is written atomically; an unreadable input is reported and skipped.
    """
    image_save, video_save = tuple(save or OUTPUTS), tuple(save or VIDEO_DEFAULT_OUTPUTS)
    unknown = sorted(set(image_save) - set(OUTPUTS))
    if unknown or (save is not None and not save):
        raise ValueError(f"save: choose from {', '.join(OUTPUTS)}, got {', '.join(save or ()) or 'nothing'}")
    if ids not in ("train", "dataset"):
        raise ValueError(f"ids: expected train or dataset, got {ids!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if every < 1:
        raise ValueError(f"every: segment every N-th frame of a video, N at least 1, got {every}")
    out_dir = Path(out_dir)
    summary = InferenceSummary()
    start = time.perf_counter()
    images = [pair for pair in pairs if not is_video(pair[0])]
    if images:
        with progress_bar(total=len(images), desc="infer", unit="img", enabled=progress) as bar:
            for batch in _batches(images, batch_size, summary):
                labels = segmenter.predict_batch([image for _, _, image in batch], batch_size=len(batch))
                for (source, name, image), label in zip(batch, labels, strict=True):
                    if "label" in image_save:
                        ids_map = segmenter.to_dataset_ids(label) if ids == "dataset" else label
                        write_png(out_dir / "label" / name, ids_map)
                    if "color" in image_save:
                        write_png(out_dir / "color" / name, colorize(label, segmenter.palette))
                    if "overlay" in image_save:
                        write_png(out_dir / "overlay" / name, overlay(image, label, segmenter.palette, alpha))
                    summary.written.append(source)
                bar.update(len(summary.written) + len(summary.failed) - bar.n)
            bar.update(len(summary.written) + len(summary.failed) - bar.n)
    video_start = time.perf_counter()
    for source, name in pairs:
        if is_video(source):
            try:
                summary.videos.append(
                    segment_video(
                        segmenter, source, out_dir, name, video_save, ids, batch_size, alpha, every, progress
                    )
                )
            except DatasetError as err:
                log.warning("skipped %s", err)
                summary.failed.append((source, str(err)))
    summary.seconds = time.perf_counter() - start
    summary.video_seconds = summary.seconds - (video_start - start)
    summary.folders = [
        out_dir / kind
        for kind in OUTPUTS
        if (kind in image_save and summary.written) or (kind in video_save and summary.videos)
    ]
    return summary
