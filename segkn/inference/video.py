"""Segmenting videos: frames streamed from OpenCV, label maps per frame, colour-mask and overlay videos.

A video is read frame by frame (a batch at a time, never whole) and its output videos are written to
temp files beside their final names, renamed into place when the last frame is in: a run that is
killed leaves no half video under a final name. A file that ends before the frame count in its header
(an interrupted copy) keeps what was segmented and says so.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from segkn.atomic import commit_temp, temp_beside
from segkn.data.errors import DatasetError
from segkn.data.io import decoder_words, stderr_captured, write_png
from segkn.inference.visualize import colorize, overlay
from segkn.progress import progress_bar

if TYPE_CHECKING:
    from segkn.inference.predictor import Segmenter

__all__ = [
    "FALLBACK_FPS",
    "OUTPUTS",
    "VIDEO_DEFAULT_OUTPUTS",
    "VIDEO_SUFFIXES",
    "VideoReader",
    "VideoResult",
    "VideoWriter",
    "is_video",
    "segment_video",
]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")  # video files segkn reads, lower case
ESTIMATED_COUNT_SUFFIXES = (".mkv",)  # containers without a frame count: OpenCV estimates one
# what segkn infer writes: label maps, colour masks, overlays (for a video: a PNG per frame, two videos)
OUTPUTS = ("label", "color", "overlay")
VIDEO_DEFAULT_OUTPUTS = ("overlay",)  # a video's outputs unless asked otherwise: the overlay video
FALLBACK_FPS = 25.0  # for a video whose header states no frame rate

# (suffix, fourcc, OpenCV backend) of the videos segkn writes, best first. FFmpeg's encoders store even
# sizes only (they drop an odd last row or column), OpenCV's own MJPEG writer keeps any size.
_EVEN_SIZE = ((".mp4", "mp4v", cv2.CAP_FFMPEG), (".avi", "MJPG", cv2.CAP_OPENCV_MJPEG))
_ODD_SIZE = ((".avi", "MJPG", cv2.CAP_OPENCV_MJPEG),)


def is_video(path: str | Path) -> bool:
    """True for a file name with a video suffix (.mp4, .avi, .mov, .mkv, in any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _first_words(said: Sequence[str]) -> str:
    """The first thing FFmpeg or OpenCV said, without its ``[component @ 0x...]`` or log prefix; or ""."""
    for line in "\n".join(said).splitlines():
        if line.strip():
            return decoder_words(re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", line.strip()))
    return ""


def _detail(said: Sequence[str]) -> str:
    """The first thing a decoder said, as `` (words)``, or nothing."""
    words = _first_words(said)
    return f" ({words})" if words else ""


class VideoReader:
    """The frames of a video file as H x W x 3 uint8 RGB arrays, every ``every``-th one, a batch at a time.

    ``announced`` is the frame count in the file's header (None where it states none), ``fps`` its frame
    rate, ``read`` the frames taken from the stream so far (segmented or skipped). Raises DatasetError,
    naming the file, for a file OpenCV cannot open or in which no frame decodes.
    """

    def __init__(self, path: str | Path, every: int = 1) -> None:
        self.path = Path(path)
        if every < 1:
            raise ValueError(f"every: segment every N-th frame, N at least 1, got {every}")
        self.every = every
        try:
            with open(self.path, "rb") as f:
                empty = not f.read(1)
        except OSError as err:
            raise DatasetError(f"cannot read video {self.path}: {err.strerror or err}") from None
        with stderr_captured() as said:
            # FFmpeg by an absolute name: OpenCV's image-sequence reader would take a '%' in it as a pattern
            cap = cv2.VideoCapture(os.path.abspath(self.path), cv2.CAP_FFMPEG)
            opened = cap.isOpened()
        if not opened or empty:
            cap.release()
            why = (
                "the file is empty"
                if empty
                else "the file is corrupt, cut short or in a format OpenCV cannot decode"
            )
            raise DatasetError(f"cannot read video {self.path}: {why}{_detail(said)}; replace or remove it")
        self._cap = cap
        count, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
        self.announced = int(count) if count > 0 else None
        # Matroska/WebM store no frame count: OpenCV estimates it from the duration (of the longest
        # stream, often the audio), so falling short of it is no sign of damage by itself
        self.estimated = self.path.suffix.lower() in ESTIMATED_COUNT_SUFFIXES
        if not (math.isfinite(fps) and fps > 0):
            log.warning("%s: the video states no frame rate; its outputs get %g fps", self.path, FALLBACK_FPS)
            fps = FALLBACK_FPS
        self.fps = float(fps)
        self.read = 0
        self.stop_reason = ""  # what the decoder said when the stream ended, if anything
        self._ended = False

    @property
    def expected(self) -> int | None:
        """The frames to segment if the video holds what its header announces."""
        return None if self.announced is None else math.ceil(self.announced / self.every)

    @property
    def ended_early(self) -> bool:
        """True once the stream ended before the frame count in the header (for an estimated count:
        and the decoder reported a problem)."""
        short = self._ended and self.announced is not None and self.read < self.announced
        return short and (not self.estimated or bool(self.stop_reason))

    def take(self, count: int) -> list[tuple[int, np.ndarray]]:
        """Up to ``count`` more frames to segment, as (frame index in the video, RGB frame); [] at the end."""
        taken: list[tuple[int, np.ndarray]] = []
        with stderr_captured() as said:
            while len(taken) < count and not self._ended:
                wanted = self.read % self.every == 0
                ok, frame = self._cap.read() if wanted else (self._cap.grab(), None)
                if not ok:
                    self._ended = True
                    break
                if wanted:
                    taken.append((self.read, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
                self.read += 1
        if self._ended and self.read == 0:
            detail = _detail(said)
            raise DatasetError(
                f"cannot read video {self.path}: no frame could be decoded{detail}; replace or remove it"
            )
        words = _first_words(said)
        if words:
            log.debug("%s, frame %d: %s", self.path, self.read, words)
            if self._ended:
                self.stop_reason = words
        return taken

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        while batch := self.take(1):
            yield from batch

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """A video of RGB frames written to a temp file beside ``base`` + suffix; `commit` renames it into place.

    ``base`` is the output path without suffix. Frames of an even size go into an MPEG-4 (mp4v) ``.mp4``,
    others (or where OpenCV has no mp4v encoder) into an MJPG ``.avi``, which keeps every size.
    ValueError when OpenCV can open no writer.
    """

    def __init__(self, base: str | Path, fps: float, size: tuple[int, int]) -> None:
        base, (h, w) = Path(base), size
        base.parent.mkdir(parents=True, exist_ok=True)
        candidates = _EVEN_SIZE if h % 2 == 0 and w % 2 == 0 else _ODD_SIZE
        heard: list[str] = []  # what OpenCV said about writers it could not open
        for suffix, fourcc, backend in candidates:
            self.path = base.with_name(base.name + suffix)
            self._tmp = temp_beside(self.path, keep_suffix=True)
            with stderr_captured() as said:
                self._writer = cv2.VideoWriter(
                    os.path.abspath(self._tmp), backend, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h)
                )
            if self._writer.isOpened():
                break
            heard += said
            self._writer.release()
            self._tmp.unlink(missing_ok=True)
        else:
            tried = ", ".join(f"{fourcc} {suffix}" for suffix, fourcc, _ in candidates)
            raise ValueError(
                f"cannot write the video {base}: OpenCV opened no video writer ({tried}){_detail(heard)}"
            )
        self.size = size

    def write(self, rgb: np.ndarray) -> None:
        """Append one H x W x 3 uint8 RGB frame of this video's size."""
        assert rgb.shape[:2] == self.size, "the frames of a video share one size"
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def commit(self) -> Path:
        """Finish the file and move it to its final name; returns that name."""
        self._writer.release()
        commit_temp(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Drop the unfinished file (nothing once committed); the final name is left as it was."""
        self._writer.release()
        self._tmp.unlink(missing_ok=True)


@dataclass
class VideoResult:
    """What `segment_video` did with one video."""

    source: Path
    frames: int = 0  # frames segmented
    read: int = 0  # frames taken from the stream (segmented or skipped)
    announced: int | None = None  # frame count in the header
    fps: float = 0.0  # of the output videos
    outputs: list[Path] = field(default_factory=list)  # videos written, and the label folder
    stop_reason: str = ""
    ended_early: bool = False  # before the header's frame count (see `VideoReader.ended_early`)

    def note(self) -> str:
        """One line on a video that ended before its header's frame count."""
        said = f" ({self.stop_reason})" if self.stop_reason else ""
        return (
            f"{self.source}: the video ends after {self.read} of the {self.announced} frames its header "
            f"announces, cut short or damaged{said}; its outputs hold the {self.frames} frame(s) segmented"
        )


def segment_video(
    segmenter: Segmenter,
    source: str | Path,
    out_dir: str | Path,
    name: str | Path | None = None,
    save: Sequence[str] = VIDEO_DEFAULT_OUTPUTS,
    ids: str = "train",
    batch_size: int = 1,
    alpha: float = 0.5,
    every: int = 1,
    progress: bool = True,
) -> VideoResult:
    """Segment every ``every``-th frame of a video, ``batch_size`` frames at a time on the model.

    Under ``out_dir`` it writes, per kind in ``save``: ``label/<name>/<frame index, 6 digits>.png`` (train
    ids, or the dataset's ids with ``ids="dataset"``), ``color/<name>.mp4`` (colour masks) and
    ``overlay/<name>.mp4`` (masks blended over the frames), videos of the input's frame size at its frame
    rate divided by ``every`` (so they last as long as the input). ``name`` defaults to the file's stem.
    DatasetError for a video that cannot be read (nothing is written then). The output videos appear
    only when complete; a video that ends before its header's frame count keeps what was read.
    """
    source = Path(source)
    name = Path(name) if name is not None else Path(source.stem)
    unknown = sorted(set(save) - set(OUTPUTS))
    if unknown or not save:
        raise ValueError(f"save: choose from {', '.join(OUTPUTS)}, got {', '.join(save) or 'nothing'}")
    if ids not in ("train", "dataset"):
        raise ValueError(f"ids: expected train or dataset, got {ids!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    with VideoReader(source, every) as reader:
        result = VideoResult(source, announced=reader.announced, fps=reader.fps / every)
        writers: dict[str, VideoWriter] = {}
        try:
            bar: Any = progress_bar(total=reader.expected, desc=source.name, unit="frame", enabled=progress)
            with bar:
                while batch := reader.take(batch_size):
                    if result.frames == 0:
                        if "label" in save:
                            _remove_label_frames(out_dir / "label" / name)  # an earlier run's
                        size = batch[0][1].shape[:2]
                        for kind in ("color", "overlay"):
                            if kind in save:
                                writers[kind] = VideoWriter(out_dir / kind / name, result.fps, size)
                    for index, frame in batch:
                        if writers and frame.shape[:2] != size:
                            raise DatasetError(
                                f"video {source}: frame {index} is {frame.shape[0]}x{frame.shape[1]}, the "
                                f"first {size[0]}x{size[1]}; segkn writes videos of one frame size"
                            )
                    _segment_frames(segmenter, batch, writers, out_dir / "label" / name, save, ids, alpha)
                    result.frames += len(batch)
                    bar.update(len(batch))
            result.outputs = [writer.commit() for writer in writers.values()]
        except DatasetError:
            _remove_label_frames(out_dir / "label" / name)  # a video that cannot be read leaves nothing
            raise
        finally:  # a writer not committed leaves no file
            for writer in writers.values():
                writer.discard()
        if "label" in save:
            result.outputs.append(out_dir / "label" / name)
        result.read, result.stop_reason = reader.read, reader.stop_reason
        result.ended_early = reader.ended_early
        if reader.estimated and reader.announced is not None and reader.read < reader.announced:
            if not result.ended_early:
                log.info(
                    "%s: %d frames read of about %d estimated from the duration", source, reader.read,
                    reader.announced,
                )  # fmt: skip
    if result.ended_early:
        log.warning("%s", result.note())
    return result


def _remove_label_frames(folder: Path) -> None:
    """Remove the per-frame label maps (``<6 digits>.png``) in ``folder``; nothing else is touched."""
    if folder.is_dir():
        for path in folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
            path.unlink()


def _segment_frames(
    segmenter: Segmenter,
    batch: list[tuple[int, np.ndarray]],
    writers: dict[str, VideoWriter],
    label_dir: Path,
    save: Sequence[str],
    ids: str,
    alpha: float,
) -> None:
    """Segment one batch of (index, RGB frame) and write its label maps and video frames."""
    labels = segmenter.predict_batch([frame for _, frame in batch], batch_size=len(batch))
    for (index, frame), label in zip(batch, labels, strict=True):
        if "label" in save:
            write_png(
                label_dir / f"{index:06d}.png", segmenter.to_dataset_ids(label) if ids == "dataset" else label
            )
        if "color" in writers:
            writers["color"].write(colorize(label, segmenter.palette))
        if "overlay" in writers:
            writers["overlay"].write(overlay(frame, label, segmenter.palette, alpha))
