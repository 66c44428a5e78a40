"""segkn.models.prediction: whole image, sliding windows, multi-scale and flip, same-size batches.

(It lives with the engine tests beside prediction_reference.py, which the inference tests share.)
"""

import pytest
import torch

from segkn.models.prediction import predict, predict_logits, same_size_batches, slide_logits
from tests.engine.prediction_reference import (
    PositionModel,
    pixelwise_model,
    tta_probabilities,
    window_average,
)


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
    model = pixelwise_model()
    x = torch.rand(3, 3, 37, 45)
    expected = model(x)
    got = slide_logits(model, x, crop, stride, window_batch=3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_tta_probabilities_at_the_label_size():
    model = pixelwise_model()
    x = torch.rand(2, 3, 24, 32)
    plain = predict(model, x)
    torch.testing.assert_close(plain, model(x).softmax(1))
    # a pixelwise model is mirror-symmetric: flipping changes nothing
    torch.testing.assert_close(predict(model, x, flip=True), plain, rtol=1e-5, atol=1e-6)
    multi = predict(model, x, scales=[0.5, 1.0, 1.5], flip=True, out_size=(48, 64))
    assert multi.shape == (2, 4, 48, 64)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 48, 64))


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


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ([1, 1, 2, 2, 2, 1], None, [[1, 1], [2, 2, 2], [1]]),
        ([1, 1, 1, 1, 1], 2, [[1, 1], [1, 1], [1]]),
        ([3, 4, 4, 4], 2, [[3], [4, 4], [4]]),
        ([], 3, []),
    ],
)
def test_same_size_batches_keep_order_and_split_at_size_changes(sizes, limit, expected):
    items = [(size, position) for position, size in enumerate(sizes)]
    batches = list(same_size_batches(iter(items), lambda item: item[0], limit))
    assert [[size for size, _ in batch] for batch in batches] == expected
    assert [item for batch in batches for item in batch] == items
