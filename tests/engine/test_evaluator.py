import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segkn.engine.evaluator import (
    evaluate,
    metrics_report,
    predict,
    predict_logits,
    slide_logits,
    write_report,
)
from segkn.engine.loaders import ShardSampler, TrainSampler
from segkn.engine.metrics import ConfusionMatrix
from segkn.models import build_model
from tests.engine.prediction_reference import PositionModel, top2_gap, tta_probabilities, window_average


def _pixelwise(num_classes=4, seed=0):
    """A model whose logits at a pixel depend on that pixel only, so any tiling gives the whole result."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, kernel_size=1).eval()


@pytest.fixture(scope="module")
def kn_model():
    torch.manual_seed(0)
    cfg = {"arch": "unet", "encoder": "knresnet18", "encoder_depth": 3, "num_classes": 3}
    return build_model({**cfg, "decoder_channels": [16, 16, 16]}).eval()


@torch.no_grad()
def test_slide_and_whole_give_same_shape(kn_model):
    x = torch.rand(2, 3, 40, 52)
    whole = predict_logits(kn_model, x, "whole")
    slide = predict_logits(kn_model, x, "slide", crop_size=(32, 32), stride=(20, 20))
    assert whole.shape == slide.shape == (2, 3, 40, 52)
    assert torch.isfinite(slide).all()


@torch.no_grad()
@pytest.mark.parametrize("crop", [(40, 52), (64, 64), (100, 60)])
def test_slide_with_crop_covering_the_image_equals_whole(kn_model, crop):
    x = torch.rand(1, 3, 40, 52)
    whole = predict_logits(kn_model, x, "whole")
    assert torch.equal(predict_logits(kn_model, x, "slide", crop_size=crop, stride=(8, 8)), whole)


@torch.no_grad()
@pytest.mark.parametrize(("crop", "stride"), [((16, 16), (16, 16)), ((16, 24), (10, 7)), ((13, 50), (5, 50))])
def test_slide_windows_tile_the_image_and_average_overlaps(crop, stride):
    model = _pixelwise()
    x = torch.rand(3, 3, 37, 45)
    expected = model(x)
    got = slide_logits(model, x, crop, stride, window_batch=3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_tta_probabilities_at_the_label_size():
    model = _pixelwise()
    x = torch.rand(2, 3, 24, 32)
    plain = predict(model, x)
    torch.testing.assert_close(plain, model(x).softmax(1))
    # a pixelwise model is mirror-symmetric: flipping changes nothing
    torch.testing.assert_close(predict(model, x, flip=True), plain, rtol=1e-5, atol=1e-6)
    multi = predict(model, x, scales=[0.5, 1.0, 1.5], flip=True, out_size=(48, 64))
    assert multi.shape == (2, 4, 48, 64)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 48, 64))


class _Tiny(Dataset):
    """Images at half the size of their masks (as after an eval resize); masks hold 255 at the border."""

    def __init__(self, n=5, num_classes=4):
        g = torch.Generator().manual_seed(1)
        self.images = [torch.rand(3, 8 + i, 10, generator=g) for i in range(n)]
        self.masks = []
        for image in self.images:
            mask = torch.randint(0, num_classes, (2 * image.shape[1], 20), generator=g)
            mask[0] = 255
            self.masks.append(mask)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i]


def _reference_matrix(model, data, num_classes):
    cm = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for image, mask in data:
            logits = nn.functional.interpolate(model(image[None]), size=mask.shape, mode="bilinear")
            cm.update(logits.argmax(1)[0], mask)
    return cm.mat


@pytest.mark.parametrize("batch_size", [1, 3])
def test_evaluate_scores_at_the_mask_resolution(batch_size):
    model, data = _pixelwise(), _Tiny()
    cm = evaluate(model, data, 4, batch_size=batch_size, progress=False)
    labelled = sum(int((m != 255).sum()) for m in data.masks)
    assert int(cm.mat.sum()) == labelled
    assert torch.equal(cm.mat, _reference_matrix(model, data, 4))


def test_evaluate_slide_flip_runs_and_keeps_model_mode(kn_model):
    kn_model.train()
    data = _Tiny(2, num_classes=3)
    cm = evaluate(kn_model, data, 3, mode="slide", crop_size=(6, 6), stride=(4, 4), flip=True, progress=False)
    assert kn_model.training
    kn_model.eval()
    assert int(cm.mat.sum()) == sum(int((m != 255).sum()) for m in data.masks)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_sample_once(world):
    shards = [list(ShardSampler(7, r, world)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))


def test_train_sampler_order_is_fixed_by_seed_and_epoch():
    a, b = TrainSampler(10, seed=3), TrainSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2, start=4)
    draws = list(a)
    assert list(b) == draws[4:] and len(b) == 6
    assert sorted(i for i, _ in draws) == list(range(10))
    a.set_epoch(3)
    assert list(a) != draws
    ranks = [TrainSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(2)
    per_rank = [list(r) for r in ranks]
    assert all(len(p) == 3 for p in per_rank)  # 10 // 3, the tail is dropped
    assert sorted(d for p in per_rank for d in p) == sorted(draws[:9])  # same draws and seeds, split up


def test_report_json_has_null_for_absent_classes(tmp_path):
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    report = metrics_report(cm, ["x", "y", "z"], step=7)
    write_report(report, tmp_path / "eval_val.json", cm.table(["x", "y", "z"]))
    loaded = json.loads((tmp_path / "eval_val.json").read_text())
    assert loaded["step"] == 7 and loaded["classes"][2] == {"name": "z", "iou": None, "acc": None}
    assert math.isclose(loaded["miou"], np.mean([0.5, 0.5]))
    assert "mIoU 50.00" in (tmp_path / "eval_val.txt").read_text()


# ---- against hand-written sliding windows and TTA, with a model for which each step matters ----------


@pytest.mark.parametrize(
    ("size", "crop", "stride"),
    [((37, 45), (16, 24), (10, 7)), ((40, 52), (24, 24), (16, 16)), ((30, 61), (13, 50), (5, 50))],
)
def test_slide_averages_the_windows_that_cover_each_pixel(size, crop, stride):
    model = PositionModel()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = window_average(model, x, crop, stride)
    with torch.no_grad():
        assert (expected - model(x)).abs().max() > 0.1  # windows see other borders than the whole image
        got = slide_logits(model, x, crop, stride, window_batch=3)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scales", "flip"), [((1.0,), True), ((0.75, 1.25), False), ((0.5, 1.0, 1.5), True)])
def test_tta_averages_rescaled_and_unflipped_views(scales, flip):
    model = PositionModel()
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    expected = tta_probabilities(model, x, (24, 32), scales, flip)
    assert (expected - tta_probabilities(model, x, (24, 32))).abs().max() > 0.05  # TTA changes it
    got = predict(model, x, scales=scales, flip=flip)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_slide_with_tta_at_the_label_size():
    model = PositionModel()
    x = torch.rand(1, 3, 36, 44, generator=torch.Generator().manual_seed(2))
    args = {"scales": (0.75, 1.25), "flip": True, "crop": (16, 20), "stride": (10, 12)}
    expected = tta_probabilities(model, x, (45, 55), **args)
    got = predict(model, x, "slide", args["crop"], args["stride"], args["scales"], True, out_size=(45, 55))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_evaluate_scores_slide_and_tta_predictions():
    """Dataset scoring: slide + scales + flip, labels at twice the image size, against hand-made scores."""
    model, data = PositionModel(), _Tiny(3)
    crop, stride, scales = (6, 8), (4, 5), (0.75, 1.25)
    cm = evaluate(model, data, 4, mode="slide", crop_size=crop, stride=stride, scales=scales, flip=True,
                  progress=False)  # fmt: skip
    expected = ConfusionMatrix(4)
    for image, mask in data:
        probs = tta_probabilities(model, image[None], tuple(mask.shape), scales, True, crop, stride)
        assert top2_gap(probs).min() > 1e-4  # no near-ties: argmax is well defined
        expected.update(probs.argmax(1)[0], mask)
    assert torch.equal(cm.mat, expected.mat)
    # and the plain whole-image scores differ, so the settings were applied
    plain = evaluate(model, data, 4, progress=False)
    assert not torch.equal(plain.mat, cm.mat)
