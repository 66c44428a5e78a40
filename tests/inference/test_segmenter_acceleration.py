import numpy as np
import pytest
import torch

from segkn.cli import main
from segkn.data.io import write_png
from segkn.engine.acceleration import compiled_graphs
from segkn.inference import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

# the compile tests use a shallow U-Net: Inductor's compile time grows with the number of layers
SHALLOW = {"model": {"encoder_depth": 2, "decoder_channels": [8, 8]}}


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_channels_last_gives_the_same_probabilities(tiny_checkpoint):
    path = tiny_checkpoint()
    plain = Segmenter.from_checkpoint(path, device="cpu")
    last = Segmenter.from_checkpoint(path, device="cpu", channels_last=True, flip=True, scales=[0.75, 1.0])
    plain.flip, plain.scales = True, [0.75, 1.0]
    assert not plain.channels_last and last.channels_last and "channels_last" in repr(last)
    kernels = [p for p in last.model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    for h, w in [(37, 53), (64, 64)]:
        image = _image(h, w)
        np.testing.assert_allclose(last.predict_proba(image), plain.predict_proba(image), rtol=0, atol=1e-5)


def test_channels_last_default_comes_from_the_run_config(tiny_checkpoint):
    path = tiny_checkpoint(eval={"channels_last": True})
    assert Segmenter.from_checkpoint(path, device="cpu").channels_last
    assert not Segmenter.from_checkpoint(path, device="cpu", channels_last=False).channels_last


def test_compile_and_channels_last_need_a_pytorch_model(tiny_checkpoint):
    from segkn.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint())

    def logits(x: torch.Tensor) -> torch.Tensor:  # any callable, such as an ONNX Runtime session
        return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    args = (logits, ckpt["config"], ckpt["classes"], ckpt["palette"], "cpu")
    assert Segmenter(*args).predict(_image(8, 8)).shape == (8, 8)
    for option in ({"compile": True}, {"channels_last": True}):
        with pytest.raises(ValueError, match="apply to PyTorch models, not to a function"):
            Segmenter(*args, **option)


@pytest.mark.slow
def test_compiled_segmenter_equals_eager_and_sizes_share_one_graph(tiny_checkpoint, caplog):
    # the first size compiles a graph for that size, the second one graph with symbolic height and
    # width, which every later size reuses (sizes that are multiples of the model's divisor or not)
    path = tiny_checkpoint(**SHALLOW)
    eager = Segmenter.from_checkpoint(path, device="cpu")
    compiled = Segmenter.from_checkpoint(path, device="cpu", compile=True)
    assert compiled.compiled and "compiled" in repr(compiled)
    caplog.set_level("INFO", logger="segkn")
    counts = []
    for h, w in [(128, 128), (136, 200), (97, 333), (200, 176)]:
        image = _image(h, w)
        before = compiled_graphs()
        probs = compiled.predict_proba(image)
        counts.append(compiled_graphs() - before)
        np.testing.assert_allclose(probs, eager.predict_proba(image), rtol=0, atol=1e-5)
    # [1, 1, 0, 0]; [1, 0, 0, 0] when an earlier test compiled this model class at another size
    assert counts[0] == 1 and counts[1] <= 1 and counts[2:] == [0, 0]
    assert "torch.compile: inference on 1 image(s) of 128x128 took" in caplog.text
    assert "of 97x333 took" not in caplog.text


@pytest.mark.slow
def test_infer_compile_option(tiny_checkpoint, tmp_path, capsys):
    # the sizes of the test above: after it, this process has their graphs already
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(136, 200), (97, 333)]):
        write_png(images / f"{i}.png", _image(h, w, seed=i))
    code = main(
        ["infer", "--checkpoint", str(tiny_checkpoint(**SHALLOW)), str(images),
         "--out", str(tmp_path / "out"), "--device", "cpu", "--compile", "--save", "label"]
    )  # fmt: skip
    assert code == 0
    assert "compiled" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "label").iterdir()) == ["0.png", "1.png"]
