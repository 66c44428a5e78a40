from pathlib import Path

import cv2
import numpy as np
import pytest

from segkn.data.io import read_mask
from segkn.inference import Segmenter
from segkn.inference.batch import collect_inputs, segment_files

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, h: int = 20, w: int = 24, channels: int = 3, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    assert cv2.imwrite(str(path), image[:, :, 0] if channels == 1 else image)
    return path


def test_collect_files_folders_and_globs(tmp_path):
    a = _write(tmp_path / "in" / "a.png")
    b = _write(tmp_path / "in" / "sub" / "b.jpg")
    _write(tmp_path / "in" / "sub" / "deeper" / "c.bmp")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    pairs = collect_inputs([tmp_path / "in"])
    assert [str(n) for _, n in pairs] == ["a.png", "sub/b.png", "sub/deeper/c.png"]
    assert collect_inputs([b]) == [(b, Path("b.png"))]
    globbed = collect_inputs([str(tmp_path / "in" / "**" / "*.jpg")])
    assert globbed == [(b, Path("sub/b.png"))]
    assert collect_inputs([str(tmp_path / "in" / "*.png"), a]) == [(a, Path("a.png"))]  # named twice


def test_collect_skips_the_output_folder_and_reports_bad_inputs(tmp_path):
    _write(tmp_path / "in" / "a.png")
    _write(tmp_path / "in" / "pred" / "label" / "a.png")
    assert [str(n) for _, n in collect_inputs([tmp_path / "in"], exclude=tmp_path / "in" / "pred")] == [
        "a.png"
    ]
    with pytest.raises(FileNotFoundError, match="no such image or video file or folder"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(FileNotFoundError, match="matches no image or video"):
        collect_inputs([str(tmp_path / "in" / "*.tif")])
    _write(tmp_path / "in" / "a.jpg")
    with pytest.raises(ValueError, match="would both be written as a.png"):
        collect_inputs([tmp_path / "in"], exclude=tmp_path / "in" / "pred")


def test_segment_files_writes_outputs_and_skips_corrupt_images(tmp_path, tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu")
    _write(tmp_path / "in" / "a.png", seed=1)
    _write(tmp_path / "in" / "b.png", seed=2)
    _write(tmp_path / "in" / "sub" / "c.tif", h=17, w=31, seed=3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    pairs = collect_inputs([tmp_path / "in"])
    summary = segment_files(seg, pairs, tmp_path / "out", batch_size=2, progress=False)
    assert [p.name for p in summary.written] == ["a.png", "b.png", "c.tif"]
    assert [p.name for p, _ in summary.failed] == ["broken.png"]
    assert "broken.png" in summary.text() and "segmented 3 image(s)" in summary.text()
    for name, size in [("a.png", (20, 24)), ("sub/c.png", (17, 31))]:
        labels = read_mask(tmp_path / "out" / "label" / name)
        assert labels.shape == size
        source = tmp_path / "in" / (name if name.startswith("a") else "sub/c.tif")
        np.testing.assert_array_equal(labels, seg.predict(source))
        colour = cv2.imread(str(tmp_path / "out" / "color" / name))
        assert colour.shape == (*size, 3)
        assert (tmp_path / "out" / "overlay" / name).is_file()
    assert not (tmp_path / "out" / "label" / "broken.png").exists()
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_segment_files_dataset_ids_and_selected_outputs(tmp_path, tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu", label_ids=[7, 8, 11])
    _write(tmp_path / "a.png")
    summary = segment_files(
        seg,
        collect_inputs([tmp_path / "a.png"]),
        tmp_path / "out",
        save=["label"],
        ids="dataset",
        progress=False,
    )
    assert len(summary.written) == 1
    labels = read_mask(tmp_path / "out" / "label" / "a.png")
    np.testing.assert_array_equal(labels, seg.to_dataset_ids(seg.predict(tmp_path / "a.png")))
    assert set(np.unique(labels)) <= {7, 8, 11}
    assert not (tmp_path / "out" / "color").exists()
    with pytest.raises(ValueError, match="choose from"):
        segment_files(seg, [], tmp_path / "out", save=["mask"], progress=False)
