import os

import numpy as np
import pytest
import torch

import segkn
from segkn.data.transforms import build_transform
from segkn.engine.checkpoint import CheckpointError, model_from_checkpoint, publish_checkpoint
from segkn.inference import Segmenter
from segkn.models.prediction import predict
from tests.engine._configs import TINY, merge
from tests.engine.prediction_reference import PositionModel, top2_gap, tta_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_segmenter_is_exported_at_the_top_level(tiny_checkpoint):
    assert segkn.Segmenter is Segmenter
    seg = segkn.Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu")
    assert seg.classes == ["class0", "class1", "class2"] and seg.device.type == "cpu"


def test_predict_gives_a_label_map_at_the_image_size(tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu")
    image = _image(37, 53)
    labels = seg.predict(image)
    assert labels.shape == (37, 53) and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1, 2}
    proba = seg.predict_proba(image)
    assert proba.shape == (3, 37, 53) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(0), labels)


@pytest.mark.parametrize("normalize", ["none", "imagenet"])
def test_preprocessing_is_the_training_eval_transform(tiny_checkpoint, normalize):
    path = tiny_checkpoint(data={"normalize": normalize, "eval_resize": [48, 40]})
    seg = Segmenter.from_checkpoint(path, device="cpu")
    model, ckpt = model_from_checkpoint(path)
    image = _image(31, 45, seed=1)
    tensor, _ = build_transform(ckpt["config"]["data"], train=False)(image, np.zeros((31, 45), np.uint8))
    assert tensor.shape == (3, 48, 40)  # resized by eval_resize, as in evaluation
    expected = predict(model.eval(), tensor[None], out_size=(31, 45))[0].numpy()
    np.testing.assert_allclose(seg.predict_proba(image), expected, rtol=0, atol=1e-6)


def test_paths_grey_and_rgba_inputs(tiny_checkpoint, tmp_path):
    import cv2

    seg = Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu")
    rgb = _image(24, 30)
    cv2.imwrite(str(tmp_path / "x.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(seg.predict(tmp_path / "x.png"), seg.predict(rgb))
    rgba = np.concatenate([rgb, np.full((24, 30, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(seg.predict(rgba), seg.predict(rgb))
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(seg.predict(grey), seg.predict(np.repeat(grey[:, :, None], 3, 2)))
    with pytest.raises(ValueError, match="uint8"):
        seg.predict(rgb.astype(np.float32))


def test_batches_equal_single_images(tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu")
    images = [_image(20, 28, 0), _image(20, 28, 1), _image(33, 17, 2), _image(20, 28, 3)]
    batched = seg.predict_batch(images, batch_size=2)
    for image, labels in zip(images, batched, strict=True):
        np.testing.assert_array_equal(labels, seg.predict(image))


def test_eval_settings_come_from_the_checkpoint_and_can_be_overridden(tiny_checkpoint):
    path = tiny_checkpoint(eval={"mode": "slide", "crop_size": [16, 16], "flip": True})
    seg = Segmenter.from_checkpoint(path, device="cpu")
    assert (seg.mode, seg.crop_size, seg.flip) == ("slide", [16, 16], True)
    model, _ = model_from_checkpoint(path)
    image = _image(40, 44)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    expected = predict(model.eval(), x, "slide", [16, 16], None, [1.0], True)[0].argmax(0).numpy()
    np.testing.assert_array_equal(seg.predict(image), expected)
    whole = Segmenter.from_checkpoint(path, device="cpu", mode="whole", flip=False, scales=[0.5, 1.0])
    assert (whole.mode, whole.flip, whole.scales) == ("whole", False, [0.5, 1.0])


def _far_from_window_borders(h: int, w: int, window: int, step: int, margin: int) -> np.ndarray:
    """Pixels at least ``margin`` from every edge that a sliding window (placed as slide_logits places
    them, over the image padded to a multiple of 8) has inside the image."""
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    near = np.zeros((ph, pw), bool)
    for y in sorted({min(r * step, ph - window) for r in range(ph // step + 1)}):
        for x in sorted({min(c * step, pw - window) for c in range(pw // step + 1)}):
            if y > 0:
                near[y : y + margin, x : x + window] = True
            if y + window < ph:
                near[y + window - margin : y + window, x : x + window] = True
            if x > 0:
                near[y : y + window, x : x + margin] = True
            if x + window < pw:
                near[y : y + window, x + window - margin : x + window] = True
    return ~near[:h, :w]


def test_auto_mode_slides_large_images_and_matches_the_whole_image_away_from_window_borders(tiny_checkpoint):
    path = tiny_checkpoint()
    assert Segmenter.from_checkpoint(path, device="cpu").mode == "auto"  # the default (eval.mode: whole)
    whole = Segmenter.from_checkpoint(path, device="cpu", mode="whole")
    auto = Segmenter.from_checkpoint(path, device="cpu", max_pixels=4 * 192 * 192)
    assert auto.auto_window == [192, 192] and auto.model.size_divisor == 8
    small = _image(150, 190)  # within max_pixels: one whole-image pass, as in mode whole
    np.testing.assert_array_equal(auto.predict_proba(small), whole.predict_proba(small))

    seen: list[int] = []  # pixels in each forward pass of the model
    hook = auto.model.register_forward_pre_hook(
        lambda _, args: seen.append(args[0][0].numel() // 3 * len(args[0]))
    )
    image = _image(500, 601, seed=3)  # 300,500 pixels, not a multiple of the size divisor
    slid = auto.predict_proba(image)
    hook.remove()
    assert len(seen) > 1 and max(seen) <= auto.max_pixels  # windows of 192x192, four at a time
    expected = whole.predict_proba(image)
    # windows step 128 (2/3 of the window on the model's grid of 8); the U-Net sees 64 pixels around
    far = _far_from_window_borders(500, 601, 192, 128, margin=64)
    assert far.mean() > 0.2
    np.testing.assert_allclose(slid[:, far], expected[:, far], atol=1e-5)
    np.testing.assert_array_equal(slid.argmax(0)[far], expected.argmax(0)[far])


def test_whole_mode_refuses_an_image_that_cannot_fit_and_auto_slides_what_fits(tiny_checkpoint, monkeypatch):
    from segkn.inference import predictor

    monkeypatch.setattr(predictor, "available_bytes", lambda device: 64 * 2**20)  # 64 MiB free
    path = tiny_checkpoint()
    image = _image(600, 800)
    whole = Segmenter.from_checkpoint(path, device="cpu", mode="whole")
    with pytest.raises(
        ValueError,
        match=r"whole-image inference of a 600x800 image needs about \d+ MiB, more than the 64 MiB of "
        r"memory available; use mode auto",
    ):
        whole.predict(image)
    auto = Segmenter.from_checkpoint(path, device="cpu")
    seen: list[int] = []
    hook = auto.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].numel() // 3))
    labels = auto.predict(image)  # 480,000 pixels: below max_pixels, but not within 64 MiB
    hook.remove()
    fits = 64 * 2**20 / predictor.whole_image_bytes(1, auto._model_bytes(), auto.num_classes)
    assert labels.shape == (600, 800) and len(seen) > 1 and max(seen) <= fits < 600 * 800


def test_cityscapes_label_ids(tiny_checkpoint, tmp_path):
    from segkn.inference.predictor import dataset_label_ids

    ids = dataset_label_ids("cityscapes")
    assert len(ids) == 19 and ids[0] == 7 and ids[18] == 33
    seg = Segmenter.from_checkpoint(tiny_checkpoint(), device="cpu", label_ids=ids)
    np.testing.assert_array_equal(seg.to_dataset_ids(np.array([[0, 1], [2, 18]])), [[7, 8], [11, 33]])
    assert Segmenter.from_checkpoint(tiny_checkpoint("b.pth"), device="cpu").label_ids is None


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_checkpoint_is_refused_and_not_executed(tmp_path, tiny_checkpoint):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pth"
    payload = torch.load(tiny_checkpoint(), weights_only=True)
    payload["classes"] = _Exploit(marker)
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        Segmenter.from_checkpoint(bad, device="cpu")
    assert not marker.exists()


def test_truncated_and_mismatched_checkpoints_give_clear_errors(tmp_path, tiny_checkpoint):
    good = tiny_checkpoint()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Segmenter.from_checkpoint(truncated, device="cpu")
    other_arch = tmp_path / "other.pth"
    payload = torch.load(good, weights_only=True)
    payload["config"]["model"]["encoder"] = "knresnet34"
    torch.save(payload, other_arch)
    with pytest.raises(CheckpointError, match="weights do not fit its model"):
        Segmenter.from_checkpoint(other_arch, device="cpu")
    foreign = tmp_path / "state_dict.pth"
    torch.save(payload["model"], foreign)
    with pytest.raises(CheckpointError, match="not a segkn checkpoint"):
        Segmenter.from_checkpoint(foreign, device="cpu")


def test_publish_strips_training_state(tmp_path, tiny_checkpoint):
    src = tiny_checkpoint()
    payload = torch.load(src, weights_only=True)
    payload["optimizer"] = {"state": {}, "param_groups": [{"lr": 0.1}]}
    payload["rng"] = {"torch": torch.get_rng_state()}
    torch.save(payload, src)
    out = tmp_path / "release.pth"
    publish_checkpoint(src, out)
    released = torch.load(out, weights_only=True)
    assert set(released) == {"format", "version", "config", "model", "classes", "palette", "step"}
    image = _image(30, 30)
    labels = Segmenter.from_checkpoint(src, device="cpu").predict(image)
    np.testing.assert_array_equal(Segmenter.from_checkpoint(out, device="cpu").predict(image), labels)
    half = tmp_path / "half.pth"
    publish_checkpoint(src, half, fp16=True)
    weights = torch.load(half, weights_only=True)["model"]
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    assert half.stat().st_size < 0.6 * out.stat().st_size
    proba = Segmenter.from_checkpoint(half, device="cpu").predict_proba(image)
    np.testing.assert_allclose(
        proba, Segmenter.from_checkpoint(src, device="cpu").predict_proba(image), atol=2e-2
    )
    with pytest.raises(CheckpointError, match="new file"):
        publish_checkpoint(src, src)


def test_a_checkpoint_does_not_need_its_encoder_initialization_file(tmp_path, tiny_checkpoint):
    path = tiny_checkpoint()
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["encoder_weights"] = str(tmp_path / "gone" / "knresnet18_imagenet.pth")
    torch.save(payload, path)
    image = _image(20, 20)
    assert Segmenter.from_checkpoint(path, device="cpu").predict(image).shape == (20, 20)


def _position_segmenter(**options):
    """A Segmenter of a model whose logits depend on windows, flips and scales; raw [0, 1] input."""
    eval_cfg = {"mode": "slide", "crop_size": [16, 20], "stride": [10, 12], "scales": [0.75, 1.25]}
    eval_cfg["flip"] = True
    config = merge(TINY, {"data": {"normalize": "none"}, "eval": eval_cfg})
    classes = ["a", "b", "c"]
    return Segmenter(PositionModel(3), config, classes, [[0, 0, 0]] * 3, device="cpu", **options)


def test_segmenter_slide_and_tta_against_hand_made_predictions():
    seg = _position_segmenter()
    assert (seg.mode, seg.crop_size, seg.stride, seg.scales, seg.flip) == (
        "slide", [16, 20], [10, 12], [0.75, 1.25], True
    )  # fmt: skip
    image = _image(36, 44, seed=3)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    expected = tta_probabilities(seg.model, x, (36, 44), (0.75, 1.25), True, (16, 20), (10, 12))[0]
    np.testing.assert_allclose(seg.predict_proba(image), expected.numpy(), rtol=0, atol=1e-5)
    assert top2_gap(expected[None]).min() > 1e-4
    np.testing.assert_array_equal(seg.predict(image), expected.argmax(0).numpy())


def test_segmenter_overrides_reach_the_prediction():
    seg = _position_segmenter(crop_size=[20, 16], stride=[6, 9], scales=[1.0, 0.5], flip=False)
    image = _image(30, 34, seed=4)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    expected = tta_probabilities(seg.model, x, (30, 34), (1.0, 0.5), False, (20, 16), (6, 9))[0]
    np.testing.assert_allclose(seg.predict_proba(image), expected.numpy(), rtol=0, atol=1e-5)
    whole = _position_segmenter(mode="whole", scales=[1.0], flip=False)
    np.testing.assert_allclose(
        whole.predict_proba(image), tta_probabilities(seg.model, x, (30, 34))[0].numpy(), rtol=0, atol=1e-5
    )
