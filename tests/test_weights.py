"""The committed demo checkpoint: its recorded sha256, its size, its format and that it really segments."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from segkn.config import config_from_dict
from segkn.data.shapes import ShapesDataset
from segkn.engine.checkpoint import load_checkpoint
from segkn.engine.evaluator import evaluate_checkpoint
from segkn.engine.metrics import ConfusionMatrix
from segkn.inference import Segmenter

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "weights" / "shapes_unet_knresnet18_kn_2k_64x64.pth"


def test_demo_checkpoint_matches_the_sha256_in_weights_readme():
    readme = (ROOT / "weights" / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{DEMO.name}`"))
    recorded = re.search(r"`([0-9a-f]{64})`", row).group(1)
    assert hashlib.sha256(DEMO.read_bytes()).hexdigest() == recorded
    assert DEMO.stat().st_size <= 25 * 2**20


def test_demo_checkpoint_is_a_release_file_of_the_demo_config():
    ckpt = load_checkpoint(DEMO)
    assert ckpt["classes"] == ["background", "circle", "rectangle"]
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(ckpt)
    model = ckpt["config"]["model"]
    assert (model["arch"], model["encoder"], model["norm"], model["encoder_depth"]) == (
        "unet",
        "knresnet18",
        "kn",
        3,
    )


def test_demo_checkpoint_segments_unseen_scenes(one_thread):
    seg = Segmenter.from_checkpoint(DEMO, device="cpu")
    scenes = ShapesDataset("test", (64, 64), 16, num_classes=3)
    cm = ConfusionMatrix(3)
    images, masks = zip(*(scenes.load(i) for i in range(len(scenes))), strict=True)
    for labels, mask in zip(seg.predict_batch(images, batch_size=8), masks, strict=True):
        cm.update(torch.from_numpy(labels), torch.from_numpy(np.asarray(mask)))
    # 84.11 measured on these 16 scenes; the val score is 84.72
    assert cm.compute()["miou"] == pytest.approx(0.8411, abs=0.005), cm.table(list(seg.classes))


def _stated_scores() -> dict[str, float]:
    """The demo's validation scores as weights/README.md states them, in percent."""
    readme = (ROOT / "weights" / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("Its validation score"))
    return {name: float(value) for name, value in re.findall(r"(\w+) (\d+\.\d+)", line)}


def test_demo_checkpoint_scores_what_weights_readme_states(one_thread):
    stated = _stated_scores()
    assert set(stated) == {"mIoU", "aAcc", "mAcc", "background", "circle", "rectangle"}
    ckpt = load_checkpoint(DEMO)
    assert 100 * ckpt["best"]["miou"] == pytest.approx(stated["mIoU"], abs=0.005)
    # `segkn eval` of the file: its own config, the 100 generated val scenes
    report, _ = evaluate_checkpoint(config_from_dict(ckpt["config"]), DEMO, progress=False)
    assert report["pixels"] == 100 * 64 * 64
    measured = {"mIoU": report["miou"], "aAcc": report["aacc"], "mAcc": report["macc"]}
    measured |= {c["name"]: c["iou"] for c in report["classes"]}
    for name, value in stated.items():
        assert 100 * measured[name] == pytest.approx(value, abs=0.5), name
