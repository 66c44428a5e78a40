import pickle

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segkn.data import (
    CatMaxRatioCrop,
    DatasetError,
    Sample,
    SegmentationDataset,
    ShapesDataset,
    build_transform,
    image_to_tensor,
)
from segkn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, fit_size


def _sample(height: int = 40, width: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (height, width)).astype(np.int64)
    mask[:3] = 255
    return image, mask


def test_train_output_types_shapes_and_labels() -> None:
    transform = build_transform({"crop_size": [24, 32]}, train=True)
    image, mask = _sample()
    for _ in range(10):
        out_image, out_mask = transform(image, mask)
        assert out_image.dtype == torch.float32 and out_image.shape == (3, 24, 32)
        assert out_mask.dtype == torch.int64 and out_mask.shape == (24, 32)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        assert 0.0 <= out_image.min() and out_image.max() <= 1.0


def test_padding_uses_zero_for_images_and_255_for_masks() -> None:
    cfg = {"crop_size": 64, "scale_range": [1.0, 1.0], "hflip": 0, "photometric": False}
    image = np.full((20, 30, 3), 200, dtype=np.uint8)
    mask = np.ones((20, 30), dtype=np.int64)
    out_image, out_mask = build_transform(cfg, train=True)(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    assert (out_mask == 1).sum() == 20 * 30 and (out_mask == 255).sum() == 64 * 64 - 20 * 30
    assert (out_image[:, out_mask == 255] == 0).all()
    assert torch.allclose(out_image[:, out_mask == 1], torch.tensor(200 / 255))


def test_plain_crop_is_a_window_of_the_input() -> None:
    cfg = {"crop_size": [16, 20], "scale_range": [1.0, 1.0], "hflip": 0, "photometric": False}
    image, mask = _sample()
    out_image, out_mask = build_transform(cfg, train=True)(image, mask)
    pixels = (out_image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    hits = [
        (y, x)
        for y in range(40 - 16 + 1)
        for x in range(60 - 20 + 1)
        if np.array_equal(image[y : y + 16, x : x + 20], pixels)
    ]
    assert len(hits) == 1
    y, x = hits[0]
    np.testing.assert_array_equal(out_mask.numpy(), mask[y : y + 16, x : x + 20])


def test_flip_and_scale() -> None:
    image, mask = _sample()
    flip = build_transform({"scale_range": [1.0, 1.0], "hflip": 1.0, "photometric": False}, train=True)
    np.testing.assert_array_equal(flip(image, mask)[1].numpy(), mask[:, ::-1])
    double = build_transform({"scale_range": [2.0, 2.0], "hflip": 0, "photometric": False}, train=True)
    out_image, out_mask = double(image, mask)
    assert out_image.shape == (3, 80, 120) and out_mask.shape == (80, 120)
    assert set(out_mask.unique().tolist()) <= set(np.unique(mask).tolist())


def test_photometric_changes_only_the_image() -> None:
    image, mask = _sample()
    cfg = {"scale_range": [1.0, 1.0], "hflip": 0, "photometric": {"brightness": 0.5, "p": 1.0}}
    out_image, out_mask = build_transform(cfg, train=True)(image, mask)
    assert not torch.equal(out_image, image_to_tensor(image))
    np.testing.assert_array_equal(out_mask.numpy(), mask)


def test_eval_is_identity_or_resize() -> None:
    image, mask = _sample()
    out_image, out_mask = build_transform({"crop_size": 8}, train=False)(image, mask)
    assert torch.equal(out_image, image_to_tensor(image)) and np.array_equal(out_mask.numpy(), mask)

    out_image, out_mask = build_transform({"eval_resize": 20}, train=False)(image, mask)
    assert out_image.shape == (3, 20, 30) and out_mask.shape == (40, 60)
    out_image, out_mask = build_transform({"eval_resize": [16, 16], "eval_resize_mask": True}, train=False)(
        image, mask
    )
    assert out_image.shape == (3, 16, 16) and out_mask.shape == (16, 16)


def test_eval_keep_ratio_fits_the_long_and_short_bounds_as_mmsegmentation() -> None:
    # mmcv's rescale_size with scale (2048, 512): factor = min(2048 / long side, 512 / short side)
    assert fit_size(375, 500, [2048, 512]) == (512, 683)  # short side to 512
    assert fit_size(500, 375, [512, 2048]) == (683, 512)  # the bounds' order does not matter
    assert fit_size(300, 1500, [2048, 512]) == (410, 2048)  # the long side would pass 2048
    assert fit_size(1024, 2048, [2048, 512]) == (512, 1024)
    image, mask = _sample(24, 40)
    cfg = {"eval_resize": [64, 16], "eval_keep_ratio": True}
    out_image, out_mask = build_transform(cfg, train=False)(image, mask)
    assert out_image.shape == (3, 16, 27) and out_mask.shape == (24, 40)  # the mask stays as stored
    out_image, out_mask = build_transform({**cfg, "eval_resize_mask": True}, train=False)(image, mask)
    assert out_image.shape == (3, 16, 27) and out_mask.shape == (16, 27)
    assert set(np.unique(out_mask.numpy())) <= set(np.unique(mask))  # nearest: no blended labels
    exact = build_transform({"eval_resize": [64, 16]}, train=False)(image, mask)[0]
    assert exact.shape == (3, 64, 16)  # without eval_keep_ratio: exactly [h, w]


def test_normalization_modes() -> None:
    image, mask = _sample()
    raw = build_transform({}, train=False)(image, mask)[0]
    torch.testing.assert_close(raw, torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    imagenet = build_transform({"normalize": "imagenet"}, train=False)(image, mask)[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(imagenet, (raw - mean) / std)
    custom = build_transform({"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}, train=False)(image, mask)[
        0
    ]
    torch.testing.assert_close(custom, (raw - 0.5) / 0.25)
    assert imagenet.dtype == custom.dtype == torch.float32


@pytest.mark.parametrize(
    "cfg",
    [
        {"normalize": "batch"},
        {"normalize": {"mean": [0.5, 0.5], "std": [1, 1, 1]}},
        {"crop_size": [0, 4]},
        {"crop_size": 4, "cat_max_ratio": 1.5},
        {"scale_range": [2.0, 1.0]},
        {"photometric": {"gamma": 1}},
    ],
)
def test_bad_settings(cfg: dict) -> None:
    with pytest.raises(DatasetError, match=list(cfg)[-1]):
        build_transform(cfg, train=True)


def test_cat_max_ratio_avoids_crops_of_one_class() -> None:
    mask = np.zeros((40, 100), dtype=np.uint8)
    mask[:, 60:] = 1
    mask[:, 90:] = 255  # ignored pixels do not count

    def balanced_share(ratio: float) -> float:
        crop = A.Compose([CatMaxRatioCrop(40, 40, cat_max_ratio=ratio)], seed=3)
        hits = 0
        for _ in range(200):
            window = crop(image=np.zeros((40, 100, 3), np.uint8), mask=mask)["mask"]
            counts = np.bincount(window[window != 255].ravel(), minlength=2)
            hits += counts.max() < 0.75 * counts.sum()
        return hits / 200

    assert balanced_share(0.75) > 0.9
    assert balanced_share(1.0) < 0.6


def test_seeded_by_torch() -> None:
    image, mask = _sample()
    cfg = {"crop_size": [24, 32], "photometric": {"p": 1.0}}

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        transform = build_transform(cfg, train=True)
        return [transform(image, mask)[0] for _ in range(3)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_batches_through_a_dataloader() -> None:
    transform = build_transform({"crop_size": 64, "normalize": "imagenet"}, train=True)
    loader = DataLoader(ShapesDataset("train", length=4, transform=transform), batch_size=2)
    images, masks = next(iter(loader))
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert masks.shape == (2, 64, 64) and masks.dtype == torch.int64


class _SameSample(SegmentationDataset):
    """Four copies of one sample: any difference between items comes from the transform."""

    classes = ("a", "b")

    def __init__(self, transform) -> None:
        super().__init__([Sample(f"s{i}", None, None) for i in range(4)], transform)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = _sample()
        return image, mask.clip(0, 1)


def test_workers_draw_different_streams_and_repeat_with_the_seed() -> None:
    transform = build_transform({"crop_size": [16, 16]}, train=True)
    pickle.loads(pickle.dumps(transform))  # workers started by spawn get a pickled copy

    def epoch() -> list[torch.Tensor]:
        torch.manual_seed(7)
        loader = DataLoader(_SameSample(transform), batch_size=1, num_workers=2)
        return [image[0] for image, _ in loader]

    first = epoch()
    assert not torch.equal(first[0], first[1])  # items 0 and 1 come from different workers
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(), strict=True))
