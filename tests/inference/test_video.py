"""Video inference (segkn.inference.video and `segkn infer` on videos) on short videos written here."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkn.cli import main
from segkn.data.errors import DatasetError
from segkn.data.io import read_mask
from segkn.inference import Segmenter
from segkn.inference.batch import collect_inputs
from segkn.inference.video import VideoReader, segment_video
from segkn.inference.visualize import colorize, overlay
from tests.inference.conftest import write_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FPS = 10.0


def shapes_frames(count: int = 8, h: int = 64, w: int = 64) -> list[np.ndarray]:
    """RGB frames of a square and a disc moving across a grey background with a stripe."""
    frames = []
    for i in range(count):
        frame = np.full((h, w, 3), 90, np.uint8)
        frame[:, w // 2 : w // 2 + 6] = (200, 200, 40)
        cv2.rectangle(frame, (4 + 4 * i, 8), (22 + 4 * i, 26), (220, 30, 30), -1)
        cv2.circle(frame, (w - 12 - 3 * i, h - 18), 9, (30, 200, 60), -1)
        frames.append(frame)
    return frames


def write_video(
    path: Path, frames: list[np.ndarray], fourcc: str = "mp4v", fps: float = FPS, backend: int = cv2.CAP_ANY
) -> Path:
    """``frames`` (RGB) as a video file through OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), backend, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), path
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of a video (RGB) as OpenCV decodes it, and its frame rate."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_mask(p) for p in sorted(folder.iterdir())}


@pytest.fixture
def segmenter(tmp_path) -> Segmenter:
    return Segmenter.from_checkpoint(write_tiny_checkpoint(tmp_path / "tiny.pth"), device="cpu")


def test_infer_writes_label_maps_per_frame_and_colour_and_overlay_videos(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    write_video(tmp_path / "in" / "clip.mp4", shapes_frames())
    write_video(tmp_path / "in" / "cams" / "cam.AVI", shapes_frames()[::-1], "MJPG")
    cv2.imwrite(str(tmp_path / "in" / "photo.png"), shapes_frames(1)[0])
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--no-progress"]
    assert main([*argv, "--save", "label", "color", "overlay", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("1 image(s), 2 video(s); Segmenter(")
    printed = captured.out
    assert "segmented 1 image(s)" in printed and "segmented 2 video(s), 16 frame(s)" in printed
    assert (out / "label" / "photo.png").is_file()
    for source, name in [
        (tmp_path / "in" / "clip.mp4", "clip"),
        (tmp_path / "in" / "cams" / "cam.AVI", "cams/cam"),
    ]:
        frames, _ = decode(source)
        assert len(frames) == 8
        labels = _labels(out / "label" / name)
        assert list(labels) == [f"{i:06d}.png" for i in range(8)]
        expected = [seg.predict(frame) for frame in frames]
        for got, want in zip(labels.values(), expected, strict=True):
            np.testing.assert_array_equal(got, want)
        assert len({got.tobytes() for got in labels.values()}) > 1  # the shapes move: so do the labels
        for kind, paint in [
            ("color", lambda f, lab: colorize(lab, seg.palette)),
            ("overlay", lambda f, lab: overlay(f, lab, seg.palette, 0.5)),
        ]:
            written, fps = decode(out / kind / f"{name}.mp4")
            assert len(written) == 8 and fps == FPS and written[0].shape == (64, 64, 3)
            painted = [paint(frame, label).astype(int) for frame, label in zip(frames, expected, strict=True)]
            for i, frame in enumerate(written):  # mp4v is lossy: each frame is nearest to its own painting
                errors = [np.abs(frame.astype(int) - p).mean() for p in painted]
                assert int(np.argmin(errors)) == i and errors[i] < 16, (kind, i, errors)
    assert sorted(p.name for p in (out / "overlay").rglob("*") if p.is_file()) == [
        "cam.mp4",
        "clip.mp4",
        "photo.png",
    ]

    # every second frame: half the frames (rounded up) at half the frame rate, named by their index
    argv = ["infer", "--checkpoint", str(ckpt), str(tmp_path / "in" / "clip.mp4"), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "every2"), "--every", "2", "--save", "overlay", "label"]) == 0
    written, fps = decode(tmp_path / "every2" / "overlay" / "clip.mp4")
    assert len(written) == 4 and fps == FPS / 2
    labels = _labels(tmp_path / "every2" / "label" / "clip")
    assert list(labels) == ["000000.png", "000002.png", "000004.png", "000006.png"]
    np.testing.assert_array_equal(labels["000006.png"], read_mask(out / "label" / "clip" / "000006.png"))


def test_segment_video_every_n_on_an_odd_count_and_the_default_outputs(tmp_path, segmenter):
    source = write_video(tmp_path / "walk.mkv", shapes_frames(7))
    frames, _ = decode(source)
    result = segment_video(segmenter, source, tmp_path / "out", every=2, batch_size=3, progress=False)
    assert (result.frames, result.read, result.announced, result.fps) == (4, 7, 7, FPS / 2)
    assert result.outputs == [tmp_path / "out" / "overlay" / "walk.mp4"] and not result.ended_early
    written, fps = decode(result.outputs[0])
    assert len(written) == 4 and fps == FPS / 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["overlay"]  # the default: overlay only

    result = segment_video(
        segmenter, source, tmp_path / "out", "named/walk", save=["label"], every=3, progress=False
    )
    labels = _labels(tmp_path / "out" / "label" / "named" / "walk")
    assert list(labels) == ["000000.png", "000003.png", "000006.png"] and result.frames == 3
    for name, label in labels.items():
        np.testing.assert_array_equal(label, segmenter.predict(frames[int(name[:6])]))
    with VideoReader(source, every=3) as reader:
        assert [index for index, _ in reader] == [0, 3, 6] and reader.read == 7 and not reader.ended_early


def test_an_odd_frame_size_is_kept_in_an_mjpg_avi(tmp_path, segmenter):
    source = write_video(tmp_path / "odd.avi", shapes_frames(3, 45, 61), "MJPG", backend=cv2.CAP_OPENCV_MJPEG)
    result = segment_video(segmenter, source, tmp_path / "out", save=["color", "overlay"], progress=False)
    assert result.outputs == [
        tmp_path / "out" / "color" / "odd.avi",
        tmp_path / "out" / "overlay" / "odd.avi",
    ]
    written, fps = decode(result.outputs[1])
    assert len(written) == 3 and written[0].shape == (45, 61, 3) and fps == FPS


def _warnings(caplog, word: str) -> list[str]:
    """The warning lines that segkn logged about ``word`` (each one line)."""
    lines = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and word in r.getMessage()
    ]
    assert all("\n" not in line for line in lines)
    return lines


def test_a_corrupt_video_is_one_error_line_and_the_other_inputs_are_written(tmp_path, capfd, caplog):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    write_video(tmp_path / "in" / "clip.mp4", shapes_frames(4))
    (tmp_path / "in" / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    whole = write_video(tmp_path / "whole.mp4", shapes_frames()).read_bytes()
    (tmp_path / "in" / "half.mp4").write_bytes(whole[: len(whole) // 2])  # its index (moov) is at the end
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    captured = capfd.readouterr()
    assert "segmented 1 video(s), 4 frame(s)" in captured.out
    assert "2 video(s) could not be read and were skipped" in captured.out
    for name in ("noise.mp4", "half.mp4"):
        lines = _warnings(caplog, name)
        assert (
            len(lines) == 1 and f"cannot read video {tmp_path / 'in' / name}: the file is corrupt" in lines[0]
        )
    assert "moov atom not found" in lines[0] and "moov" not in captured.err  # FFmpeg's own lines are kept
    assert sorted(p.name for p in out.rglob("*")) == ["clip.mp4", "overlay"]


def test_a_video_cut_short_keeps_the_frames_read_and_says_so(tmp_path, capfd, caplog):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    whole = write_video(tmp_path / "whole.avi", shapes_frames(), "MJPG").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[: len(whole) // 2])  # an interrupted copy; its header says 8
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(tmp_path / "cut.avi"), "--out", str(out), "--no-progress"]
    assert main([*argv, "--save", "label", "overlay"]) == 1
    captured = capfd.readouterr()
    lines = _warnings(caplog, "cut.avi")
    assert len(lines) == 1 and "mjpeg" not in captured.err, captured.err
    read = int(re.search(r"the video ends after (\d+) of the 8 frames its header announces", lines[0])[1])
    assert 1 <= read < 8 and f"its outputs hold the {read} frame(s) segmented" in lines[0]
    assert "1 video(s) ended early" in captured.out
    written, _ = decode(out / "overlay" / "cut.mp4")
    assert len(written) == read and len(list((out / "label" / "cut").iterdir())) == read


def test_a_stopped_run_leaves_no_half_video_under_the_final_name(tmp_path, segmenter, monkeypatch):
    source = write_video(tmp_path / "clip.mp4", shapes_frames(6))
    folder = tmp_path / "out" / "overlay"
    seen: list[list[str]] = []
    predict_batch = segmenter.predict_batch

    def stop_at_the_second_batch(images, batch_size=8):
        if seen:
            raise KeyboardInterrupt
        seen.append([])
        return predict_batch(images, batch_size)

    def written_so_far(*args, **kwargs):
        seen[-1] = sorted(p.name for p in folder.iterdir())
        return original_overlay(*args, **kwargs)

    from segkn.inference import video

    original_overlay = video.overlay
    monkeypatch.setattr(segmenter, "predict_batch", stop_at_the_second_batch)
    monkeypatch.setattr(video, "overlay", written_so_far)
    with pytest.raises(KeyboardInterrupt):
        segment_video(segmenter, source, tmp_path / "out", batch_size=3, progress=False)
    assert len(seen[0]) == 1 and re.fullmatch(
        r"\.clip\.mp4\.[0-9a-f]{8}\.tmp\.mp4", seen[0][0]
    )  # a temp file
    assert list(folder.iterdir()) == []  # removed; nothing under the final name

    (folder / "clip.mp4").write_bytes(b"the video of an earlier run")
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        segment_video(segmenter, source, tmp_path / "out", batch_size=3, progress=False)
    assert [p.name for p in folder.iterdir()] == ["clip.mp4"]
    assert (folder / "clip.mp4").read_bytes() == b"the video of an earlier run"  # left as it was


def test_collect_inputs_finds_videos_and_names_their_outputs_by_stem(tmp_path):
    for name in ("a.mp4", "sub/b.MKV", "sub/c.mov", "d.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "in" / "notes.txt").write_text("neither")
    names = [str(n) for _, n in collect_inputs([tmp_path / "in"])]
    assert names == ["a", "d.png", "sub/b", "sub/c"]
    assert [str(n) for _, n in collect_inputs([str(tmp_path / "in" / "sub" / "*")])] == ["b", "c"]
    (tmp_path / "in" / "a.avi").write_bytes(b"x")
    with pytest.raises(ValueError, match="would both be written as a;"):
        collect_inputs([tmp_path / "in"])


def test_infer_help_states_video_support(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "MP4/AVI/MOV/MKV" in text and "--every N" in text and "overlay for videos" in text


def test_label_maps_of_an_earlier_run_are_replaced_and_a_failed_video_leaves_none(
    tmp_path, segmenter, monkeypatch
):
    source = write_video(tmp_path / "walk.mp4", shapes_frames(4))
    labels = tmp_path / "out" / "label" / "walk"
    segment_video(segmenter, source, tmp_path / "out", save=["label"], progress=False)
    assert list(_labels(labels)) == ["000000.png", "000001.png", "000002.png", "000003.png"]
    segment_video(segmenter, source, tmp_path / "out", save=["label"], every=2, progress=False)
    assert list(_labels(labels)) == ["000000.png", "000002.png"]  # not a mix of both runs

    take = VideoReader.take

    def shrinking(self, count):  # the frame size changes after the first batch
        batch = take(self, count)
        return [(i, cv2.resize(f, (32, 32)) if i >= 2 else f) for i, f in batch]

    monkeypatch.setattr(VideoReader, "take", shrinking)
    with pytest.raises(DatasetError, match="frame 2 is 32x32, the first 64x64"):
        segment_video(
            segmenter, source, tmp_path / "out", save=["label", "overlay"], batch_size=2, progress=False
        )
    assert list(labels.iterdir()) == [] and not (tmp_path / "out" / "overlay" / "walk.mp4").exists()


def test_a_matroska_frame_count_is_an_estimate(tmp_path):
    for suffix, estimated in ((".mkv", True), (".avi", False)):
        source = write_video(tmp_path / f"walk{suffix}", shapes_frames(3), "MJPG")
        with VideoReader(source) as reader:
            assert len(list(reader)) == 3 and not reader.ended_early
            reader.announced = 5  # more than the stream holds: an estimate from a longer audio track
            assert reader.ended_early is not estimated
            reader.stop_reason = "invalid data found when processing input"  # the decoder said why
            assert reader.ended_early
