"""`segkn infer` / `tools/infer.py` and `segkn publish` end to end on generated images."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segkn.cli import main
from segkn.data.io import read_mask
from segkn.engine.checkpoint import model_from_checkpoint
from segkn.inference import Segmenter
from segkn.inference.runtime import read_metadata
from tests.engine.prediction_reference import top2_gap, tta_probabilities
from tests.inference.conftest import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _image(path: Path, h: int, w: int, channels: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels[:, :, 0] if channels == 1 else pixels)
    return path


@pytest.fixture
def inputs(tmp_path):
    """Colour JPEG, grey PNG in a sub-folder, RGBA PNG, BMP, TIFF and a corrupt JPEG."""
    d = tmp_path / "in"
    return {
        "a": _image(d / "photos" / "a.jpg", 30, 40, 3, 0),
        "b": _image(d / "photos" / "nested" / "b.png", 26, 19, 1, 1),
        "rgba": _image(d / "rgba.png", 33, 21, 4, 2),
        "c": _image(d / "c.bmp", 30, 40, 3, 3),
        "d": _image(d / "d.tiff", 24, 24, 3, 4),
        "corrupt": d / "corrupt.jpg",
    }


def _error_line_of(err: str) -> str:
    lines = err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    return lines[-1]


def _error_line(capsys) -> str:
    return _error_line_of(capsys.readouterr().err)


def test_infer_files_folders_globs_grey_rgba_and_a_corrupt_image(tmp_path, inputs, capsys):
    inputs["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    d, out = tmp_path / "in", tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(d / "photos"), str(d / "*.png"), str(inputs["c"])]
    argv += [
        str(inputs["d"]),
        str(inputs["corrupt"]),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 1  # one image could not be read; the others are done
    captured = capsys.readouterr()
    assert "segmented 5 image(s)" in captured.out
    assert "1 image(s) could not be read" in captured.out and "corrupt.jpg" in captured.out
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    expected = {"a.png": "a", "nested/b.png": "b", "rgba.png": "rgba", "c.png": "c", "d.png": "d"}
    for name, key in expected.items():
        labels = read_mask(out / "label" / name)
        np.testing.assert_array_equal(labels, seg.predict(inputs[key]))
        assert cv2.imread(str(out / "color" / name)).shape[:2] == labels.shape
        assert cv2.imread(str(out / "overlay" / name)).shape[:2] == labels.shape
    written = sorted(str(p.relative_to(out / "label")) for p in (out / "label").rglob("*.png"))
    assert written == sorted(expected)


def test_infer_reports_and_skips_a_truncated_jpeg(tmp_path, capfd):
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", cv2.GaussianBlur(photo, (9, 9), 3))[1].tobytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "whole.jpg").write_bytes(jpeg)
    (tmp_path / "in" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # an interrupted copy
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--no-progress"]
    assert main([*argv, "--save", "label"]) == 1
    captured = capfd.readouterr()
    assert "segmented 1 image(s)" in captured.out
    assert (
        "1 image(s) could not be read" in captured.out and "truncated.jpg: cannot read image" in captured.out
    )
    assert "Premature end" not in captured.err and "Corrupt JPEG" not in captured.err
    assert sorted(p.name for p in (out / "label").iterdir()) == ["whole.png"]


def test_tools_infer_script_runs(tmp_path, inputs):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "infer.py"), "--checkpoint", str(ckpt), str(inputs["a"])]
    cmd += ["--out", str(out), "--save", "label", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "segmented 1 image(s)" in done.stdout
    assert (out / "label" / "a.png").is_file() and not (out / "color").exists()


def test_infer_refuses_a_malicious_checkpoint_and_writes_nothing(tmp_path, inputs, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    payload = torch.load(write_tiny_checkpoint(tmp_path / "tiny.pth"), weights_only=True)
    payload["palette"] = Exploit()
    torch.save(payload, tmp_path / "evil.pth")
    out = tmp_path / "out"
    assert (
        main(["infer", "--checkpoint", str(tmp_path / "evil.pth"), str(inputs["a"]), "--out", str(out)]) == 2
    )
    line = _error_line(capsys)
    assert line.startswith("error: ") and "evil.pth" in line and "refused" in line
    assert not marker.exists() and not out.exists()


def test_infer_says_which_option_takes_an_onnx_file_or_a_checkpoint(tmp_path, inputs, capsys):
    from tests.inference.test_runtime import segkn_props, write_graph

    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    model = write_graph(tmp_path / "model.onnx", segkn_props())
    out = str(tmp_path / "out")
    assert main(["infer", "--checkpoint", str(model), str(inputs["a"]), "--out", out]) == 2
    line = _error_line(capsys)
    assert "model.onnx: this is an ONNX model file" in line and f"--onnx {model}" in line
    assert main(["infer", "--onnx", str(ckpt), str(inputs["a"]), "--out", out]) == 2
    line = _error_line(capsys)
    assert "tiny.pth: this is a PyTorch file" in line and "pass it with --checkpoint" in line
    assert main(["export", "--checkpoint", str(ckpt), "--verify", str(ckpt)]) == 2
    assert "tiny.pth: this is a PyTorch file" in _error_line(capsys)


def test_infer_usage_errors(tmp_path, inputs, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out = str(tmp_path / "out")
    assert (
        main(["infer", "--backend", "onnxruntime", "--checkpoint", str(ckpt), str(inputs["a"]), "--out", out])
        == 2
    )
    assert "needs --onnx" in _error_line(capsys)
    assert main(["infer", "--checkpoint", str(ckpt), str(tmp_path / "nothing.png"), "--out", out]) == 2
    assert "nothing.png: no such image or video file or folder" in _error_line(capsys)
    assert main(["infer", str(inputs["a"]), "--out", out]) == 2
    assert "--checkpoint" in _error_line(capsys)
    assert not Path(out).exists()


def test_publish_prints_the_sha256_of_the_release_file(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    assert main(["publish", str(ckpt), str(tmp_path / "release.pth")]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256((tmp_path / "release.pth").read_bytes()).hexdigest()
    assert f"sha256 {digest}" in out and "step 7" in out


DEMO = ROOT / "weights" / "shapes_unet_knresnet18_kn_2k_64x64.pth"


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """The demo checkpoint exported with `segkn export` (verified at its default sizes)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("onnx") / "shapes_demo.onnx"
    assert main(["export", "--checkpoint", str(DEMO), "--out", str(path)]) == 0
    return path


def test_torch_and_onnxruntime_backends_write_identical_label_maps(tmp_path, demo_onnx, capsys):
    assert main(["shapes", str(tmp_path / "scenes"), "--count", "6"]) == 0
    _image(tmp_path / "scenes" / "images" / "test" / "wide.png", 150, 230, 3, 5)  # larger, odd size
    _image(tmp_path / "scenes" / "images" / "test" / "grey.png", 61, 77, 1, 6)
    inputs = str(tmp_path / "scenes" / "images")
    for backend, model in [
        ("torch", ["--checkpoint", str(DEMO)]),
        ("onnxruntime", ["--onnx", str(demo_onnx)]),
    ]:
        argv = [
            "infer",
            "--backend",
            backend,
            *model,
            inputs,
            "--out",
            str(tmp_path / backend),
            "--no-progress",
        ]
        assert main(argv) == 0
        assert "segmented 8 image(s)" in capsys.readouterr().out
    names = sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*.png"))
    assert len(names) == 3 * 8
    for name in names:  # label maps, colour masks and overlays, byte for byte
        assert (tmp_path / "torch" / name).read_bytes() == (tmp_path / "onnxruntime" / name).read_bytes(), (
            name
        )
    labels = read_mask(tmp_path / "torch" / "label" / "test" / "shapes_test_0000.png")
    assert set(np.unique(labels)) <= {0, 1, 2} and len(np.unique(labels)) > 1

    # sliding window with flip and two scales: windows go through the exported graph in batches
    wide = str(tmp_path / "scenes" / "images" / "test" / "wide.png")
    tta = ["--mode", "slide", "--crop-size", "64", "64", "--scales", "1", "1.5", "--flip", "--save", "label"]
    for backend, model in [
        ("torch", ["--checkpoint", str(DEMO)]),
        ("onnxruntime", ["--onnx", str(demo_onnx)]),
    ]:
        assert (
            main(["infer", *model, wide, "--out", str(tmp_path / f"{backend}_tta"), *tta, "--no-progress"])
            == 0
        )
    torch_tta = read_mask(tmp_path / "torch_tta" / "label" / "wide.png")
    np.testing.assert_array_equal(torch_tta, read_mask(tmp_path / "onnxruntime_tta" / "label" / "wide.png"))
    assert torch_tta.shape == (150, 230)


def test_export_verify_an_existing_file(demo_onnx, tmp_path, capsys):
    assert (
        main(["export", "--checkpoint", str(DEMO), "--verify", str(demo_onnx), "--verify-sizes", "40x72"])
        == 0
    )
    out = capsys.readouterr().out
    assert "40x72" in out and "verified" in out
    argv = ["export", "--checkpoint", str(DEMO), "--verify", str(demo_onnx), "--verify-sizes", "40x72"]
    assert main([*argv, "--atol", "1e-12"]) == 1  # bounds nothing can meet: verification must fail
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "do not deploy it" in captured.err
    other = write_tiny_checkpoint(tmp_path / "other.pth")
    assert main(["export", "--checkpoint", str(other), "--verify", str(demo_onnx)]) == 2
    assert "sha256" in _error_line(capsys)


def test_an_export_that_fails_verification_leaves_the_file_at_out_as_it_was(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the verified model deployed last week")
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--verify-sizes", "40x72"]
    assert main([*argv, "--atol", "1e-12"]) == 1  # bounds nothing can meet: verification fails
    captured = capsys.readouterr()
    failed = tmp_path / "model.failed.onnx"
    assert out.read_bytes() == b"the verified model deployed last week"
    assert _error_line_of(captured.err) == (
        f"error: the export does not match the PyTorch model within the bounds above; it is in {failed} "
        f"for inspection; {out} keeps its earlier file; do not deploy it"
    )
    assert read_metadata(failed)["checkpoint_step"] == 7  # the whole export, to inspect
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.failed.onnx", "model.onnx", "tiny.pth"]
    assert main(argv) == 0  # it passes: the export takes the place of the earlier file
    assert read_metadata(out)["checkpoint_step"] == 7


def test_infer_mode_auto_slides_images_above_max_pixels(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    image = _image(tmp_path / "in" / "x.png", 120, 150, 3, 8)
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(image), "--out", str(out), "--save", "label"]
    assert main([*argv, "--mode", "auto", "--max-pixels", "4096", "--no-progress"]) == 0
    assert "mode=auto (whole up to 4096 pixels)" in capsys.readouterr().err
    slid = Segmenter.from_checkpoint(ckpt, device="cpu", max_pixels=4096)
    np.testing.assert_array_equal(read_mask(out / "label" / "x.png"), slid.predict(image))


def test_infer_slide_and_tta_options_against_hand_made_predictions(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth", data={"normalize": "none"})
    image = _image(tmp_path / "in" / "x.png", 36, 44, 3, 7)
    tta = ["--mode", "slide", "--crop-size", "16", "20", "--stride", "10", "12", "--scales", "0.75", "1.25"]
    argv = ["infer", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "out"), *tta]
    assert main([*argv, "--flip", "--save", "label", "--no-progress"]) == 0
    got = read_mask(tmp_path / "out" / "label" / "x.png")

    model, _ = model_from_checkpoint(ckpt)
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    probs = tta_probabilities(model.eval(), x, (36, 44), (0.75, 1.25), True, (16, 20), (10, 12))
    expected = probs.argmax(1)[0].numpy()
    assert (expected != tta_probabilities(model, x, (36, 44)).argmax(1)[0].numpy()).any()  # TTA matters
    clear = top2_gap(probs)[0].numpy() > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], expected[clear])


def test_infer_and_export_refuse_an_output_in_the_way_before_any_work(tmp_path, inputs, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    infer = ["infer", "--checkpoint", str(ckpt), str(inputs["a"]), "--no-progress", "--out"]
    label = tmp_path / "res" / "label"  # where --out res would write its label maps
    label.parent.mkdir()
    label.touch()
    for out, named in [(taken, taken), (taken / "sub", taken / "sub"), (label.parent, label)]:
        assert main([*infer, str(out)]) == 2
        captured = capsys.readouterr()
        line = _error_line_of(captured.err)
        assert line.startswith(f"error: --out {named}: ") and "a file" in line and "folder" in line, line
        assert "image(s)" not in captured.err + captured.out  # stopped before loading or segmenting anything
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder)]) == 2
    captured = capsys.readouterr()
    assert _error_line_of(captured.err) == f"error: --out {folder}: a folder is there; name the file to write"
    assert "exported" not in captured.out and not any(folder.iterdir())


def test_infer_lists_no_output_folders_when_no_image_could_be_read(tmp_path, inputs, capsys):
    inputs["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt), str(inputs["corrupt"]), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "segmented 0 image(s)" in printed and "corrupt.jpg" in printed
    assert "outputs:" not in printed and not out.exists()
    assert main([*argv[:3], str(inputs["a"]), *argv[4:]]) == 0
    assert f"outputs: {out / 'label'}, {out / 'color'}, {out / 'overlay'}" in capsys.readouterr().out


def test_export_help_states_the_oldest_opset_that_export_accepts(tmp_path, capsys, monkeypatch):
    from segkn.inference import export

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    oldest = int(re.search(r"ONNX opset, (\d+) or newer", " ".join(capsys.readouterr().out.split()))[1])
    model, _ = model_from_checkpoint(write_tiny_checkpoint(tmp_path / "tiny.pth"))
    with pytest.raises(ValueError, match="too old"):
        export.export_onnx(model, tmp_path / "old.onnx", opset=oldest - 1)

    class Exporting(Exception):
        pass

    def stop(*args, **kwargs):
        raise Exporting

    monkeypatch.setattr(export, "_quiet_export", stop)  # the opset passed the check: stop right there
    with pytest.raises(Exporting):
        export.export_onnx(model, tmp_path / "oldest.onnx", opset=oldest)


def test_a_video_through_onnxruntime_gives_the_labels_of_the_torch_backend(tmp_path, demo_onnx, capsys):
    from tests.inference.test_video import decode, shapes_frames, write_video

    clip = write_video(tmp_path / "clip.mp4", shapes_frames())
    for backend, model in [
        ("torch", ["--checkpoint", str(DEMO)]),
        ("onnxruntime", ["--onnx", str(demo_onnx)]),
    ]:
        out = ["--out", str(tmp_path / backend), "--save", "label", "overlay", "--batch-size", "4"]
        assert main(["infer", "--backend", backend, *model, str(clip), *out, "--no-progress"]) == 0
        assert "segmented 1 video(s), 8 frame(s)" in capsys.readouterr().out
        assert len(decode(tmp_path / backend / "overlay" / "clip.mp4")[0]) == 8
    names = sorted(p.name for p in (tmp_path / "torch" / "label" / "clip").iterdir())
    assert names == [f"{i:06d}.png" for i in range(8)]
    frames, _ = decode(clip)
    seg = Segmenter.from_checkpoint(DEMO, device="cpu")
    for name, frame in zip(names, frames, strict=True):
        torch_labels = read_mask(tmp_path / "torch" / "label" / "clip" / name)
        np.testing.assert_array_equal(torch_labels, seg.predict(frame))
        # the exported graph computes in another order: labels agree wherever the top two classes differ
        clear = top2_gap(torch.from_numpy(seg.predict_proba(frame))[None])[0].numpy() > 1e-4
        assert clear.mean() > 0.99
        onnx_labels = read_mask(tmp_path / "onnxruntime" / "label" / "clip" / name)
        np.testing.assert_array_equal(onnx_labels[clear], torch_labels[clear])
        assert len(np.unique(torch_labels)) > 1  # the demo model finds the shapes
