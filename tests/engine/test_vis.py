from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segkn.data import ShapesDataset, build_transform
from segkn.data.palette import ignore_colour
from segkn.engine import vis
from segkn.engine.trainer import train
from segkn.engine.vis import ValidationPanels, panel, vis_indices

from ._configs import tiny_config
from .prediction_reference import pixelwise_model

WHOLE = {"mode": "whole", "crop_size": None, "stride": None, "scales": [1.0], "flip": False}


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_the_samples_are_evenly_spaced_from_the_first():
    assert vis_indices(10, 4) == [0, 2, 5, 7]
    assert vis_indices(3, 4) == [0, 1, 2]
    assert vis_indices(5, 1) == [0] and vis_indices(5, 0) == []


def test_panels_are_image_truth_and_prediction_in_the_palette():
    transform = build_transform({"normalize": "imagenet"}, train=False)
    dataset = ShapesDataset("val", size=32, length=4, transform=transform)
    model = pixelwise_model(num_classes=dataset.num_classes)
    palette = np.asarray(dataset.palette, dtype=np.uint8)
    panels = ValidationPanels(dataset, 2, dataset.palette, "imagenet", WHOLE, Path("unused"))
    assert panels.indices == [0, 2] and panels.names == ["val_000000", "val_000002"]
    drawn = panels.draw(model, torch.device("cpu"))
    assert len(drawn) == 2
    for index, picture in zip(panels.indices, drawn, strict=True):
        image, mask = dataset.load(index)  # as stored: uint8 RGB and class indices
        assert picture.shape == (32, 3 * 32, 3) and picture.dtype == np.uint8
        assert np.abs(picture[:, :32].astype(int) - image).max() <= 1  # de-normalized back to RGB
        np.testing.assert_array_equal(picture[:, 32:64], palette[mask])
        with torch.no_grad():
            argmax = model(dataset[index][0][None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(picture[:, 64:], palette[argmax])
    assert model.training is False


def test_a_panel_is_drawn_at_the_label_size_with_ignore_in_a_neutral_colour(monkeypatch):
    palette = ShapesDataset.palette  # black background: ignored pixels are grey
    mask = np.zeros((20, 30), dtype=np.int64)
    mask[:5] = 255
    image = np.full((10, 15, 3), 200, dtype=np.uint8)  # resized by eval_resize: back to the label's size
    picture = panel(image, mask, np.ones_like(mask), palette)
    assert picture.shape == (20, 90, 3)
    assert (picture[:, :30] == 200).all()
    assert (picture[:5, 30:60] == ignore_colour(palette)).all() and ignore_colour(palette) == (128, 128, 128)
    assert (picture[5:, 30:60] == palette[0]).all() and (picture[:, 60:] == palette[1]).all()
    monkeypatch.setattr(vis, "MAX_SIDE", 15)  # a large panel is shrunk for the picture
    assert panel(image, mask, np.ones_like(mask), palette).shape == (10, 45, 3)


def _tensorboard_images(run: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    decoded = {}
    for tag in events.Tags()[IMAGES]:
        decoded[tag] = [
            (
                e.step,
                cv2.imdecode(np.frombuffer(e.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)[..., ::-1],
            )
            for e in events.Images(tag)
        ]
    return decoded


def test_every_validation_writes_the_same_samples_to_vis_and_tensorboard(tmp_path):
    cfg = tiny_config(tmp_path, data={"shapes_val_length": 5}, eval={"vis_samples": 2})
    train(cfg, progress=False)
    run = tmp_path / "runs" / "run"
    names = ["val_000000.png", "val_000002.png"]
    assert sorted(p.name for p in (run / "vis").iterdir()) == ["2", "4"]  # validations at 2 and 4
    for step in (2, 4):
        assert sorted(p.name for p in (run / "vis" / str(step)).iterdir()) == names  # no temp files left
    images = _tensorboard_images(run)
    assert sorted(images) == ["val_vis/val_000000", "val_vis/val_000002"]
    for name in names:
        first, second = _read_rgb(run / "vis" / "2" / name), _read_rgb(run / "vis" / "4" / name)
        assert first.shape == (32, 96, 3)
        np.testing.assert_array_equal(first[:, :64], second[:, :64])  # same image, same ground truth
        steps = images[f"val_vis/{name[:-4]}"]
        assert [step for step, _ in steps] == [2, 4]
        np.testing.assert_array_equal(steps[1][1], second)  # TensorBoard holds the PNG's picture


def test_vis_samples_0_writes_no_pictures(tmp_path):
    train(tiny_config(tmp_path, train={"iterations": 2}, eval={"vis_samples": 0}), progress=False)
    run = tmp_path / "runs" / "run"
    assert (run / "best.pth").is_file() and not (run / "vis").exists()
    assert _tensorboard_images(run) == {}


@pytest.mark.parametrize("value", [-1, 1.5])
def test_vis_samples_is_a_count(tmp_path, value):
    from segkn.config import ConfigError

    with pytest.raises(ConfigError, match="eval.vis_samples"):
        tiny_config(tmp_path, eval={"vis_samples": value})
