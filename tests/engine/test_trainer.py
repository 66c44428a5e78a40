import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segkn.config import ConfigError, load_config
from segkn.engine import trainer as trainer_module
from segkn.engine.checkpoint import load_checkpoint, load_init_weights
from segkn.engine.evaluator import evaluate_checkpoint
from segkn.engine.run_log import read_metrics
from segkn.engine.trainer import TrainingDiverged, train
from segkn.models import build_model
from tests.data.builders import make_cityscapes_tree, make_voc_tree

from ._configs import merge, tiny_config, tiny_dict, write_config

ROOT = Path(__file__).resolve().parents[2]


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=f"{key} differs")


def test_shapes_run_writes_its_directory_and_evaluates_from_it(tmp_path):
    cfg = tiny_config(tmp_path)
    summary = train(cfg)
    run = tmp_path / "runs" / "run"
    assert summary["step"] == 4 and summary["run_dir"] == str(run)
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "train.log"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    last = load_checkpoint(run / "last.pth")
    assert last["step"] == 4 and last["classes"] == ["background", "circle", "rectangle", "triangle", "ring"]
    assert {"optimizer", "scheduler", "scaler", "rng", "best"} <= set(last)
    assert last["config"]["model"]["num_classes"] == 5
    best = load_checkpoint(run / "best.pth")
    assert best["best"] == last["best"] and best["step"] == best["best"]["step"]

    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")

    saved = load_config(run / "config.yaml")
    assert saved.model.num_classes == 5 and saved.run_path == run
    report, table = evaluate_checkpoint(saved, run / "best.pth", out_dir=run, progress=False)
    assert report["miou"] == pytest.approx(last["best"]["miou"], abs=1e-12)  # the same model, the same data
    assert (run / "eval_val.json").is_file() and "mIoU" in table


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, train={"iterations": 1, "val_interval": 5})
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(cfg)


@pytest.mark.parametrize("kind", ["cityscapes", "voc"])
def test_trains_on_tiny_dataset_trees(tmp_path, kind):
    if kind == "cityscapes":
        root, num_classes = make_cityscapes_tree(tmp_path / "cs"), 19
    else:
        root, num_classes = make_voc_tree(tmp_path / "voc"), 21
    cfg = tiny_config(
        tmp_path, data={"type": kind, "root": str(root), "crop_size": [24, 24]}, train={"iterations": 2}
    )
    train(cfg)
    run = tmp_path / "runs" / "run"
    report, _ = evaluate_checkpoint(load_config(run / "config.yaml"), run / "best.pth", progress=False)
    assert len(report["classes"]) == num_classes and 0.0 <= report["miou"] <= 1.0
    assert report["pixels"] > 0


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # 6 train samples, batch 2: 3 batches an epoch, so the run crosses epochs and stops mid-epoch;
    # dropout and augmentation on, so the random state and the data position must both be restored
    sections = {
        "data": {"shapes_train_length": 6, "scale_range": [0.75, 1.5], "crop_size": [24, 24]},
        "train": {"iterations": 7, "val_interval": 3, "checkpoint_interval": 3, "warmup_iters": 2},
    }
    full = tiny_config(tmp_path, "full", **sections)
    parts = tiny_config(tmp_path, "parts", **sections)
    train(full)
    assert train(parts, stop_at=4)["step"] == 4
    assert load_checkpoint(tmp_path / "runs" / "parts" / "last.pth")["step"] == 4
    train(parts, run_dir=tmp_path / "runs" / "parts", resume=True)

    _assert_same_weights(_weights(full.run_path / "last.pth"), _weights(parts.run_path / "last.pth"))
    records = [[r for r in read_metrics(c.run_path) if r["kind"] == "train"] for c in (full, parts)]
    assert [r["step"] for r in records[1]] == list(range(1, 8))  # the stopped run's records, then the rest
    assert [r["loss"] for r in records[0]] == pytest.approx([r["loss"] for r in records[1]], abs=1e-6)
    best = [load_checkpoint(c.run_path / "last.pth")["best"] for c in (full, parts)]
    assert best[0] == best[1]


def test_weights_do_not_depend_on_num_workers(tmp_path):
    # every draw is augmented from its own seed, so loader workers change nothing
    sections = {"data": {"shapes_train_length": 6}, "train": {"iterations": 4, "val_interval": 10}}
    runs = [tiny_config(tmp_path, f"w{n}", **sections) for n in (0, 2)]
    runs[1].data.num_workers = 2
    for cfg in runs:
        train(cfg)
    _assert_same_weights(*(_weights(cfg.run_path / "last.pth") for cfg in runs), atol=0)


def test_accumulation_equals_the_larger_batch(tmp_path):
    # KN models are batch-independent: 2 micro-batches of 2 give the gradient of one batch of 4, up to
    # float32 rounding (SGD: Adam's first steps are lr * sign(gradient), turning rounding into lr steps)
    sections = {
        "model": {"dropout_p": 0.0},
        "data": {"scale_range": [1.0, 1.0]},
        "train": {"iterations": 2, "optimizer": "sgd", "lr": 1e-3, "min_lr": 0.0},
    }
    big = tiny_config(tmp_path, "big", **sections)
    big.train.batch_size = 4
    small = tiny_config(tmp_path, "small", **sections)
    small.train.batch_size, small.train.accumulate = 2, 2
    train(big)
    train(small)
    _assert_same_weights(
        _weights(big.run_path / "last.pth"), _weights(small.run_path / "last.pth"), atol=1e-5
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train={"iterations": 6})
    forward = trainer_module.SegmentationLoss.forward
    calls = {"n": 0}

    def nan_at_iteration_4(self, logits, target):
        calls["n"] += 1
        loss = forward(self, logits, target)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(trainer_module.SegmentationLoss, "forward", nan_at_iteration_4)
    message = r"not finite \(nan\) at iteration 4 of 6.*last\.pth \(iteration 2\)"
    with pytest.raises(TrainingDiverged, match=message):
        train(cfg)
    last = load_checkpoint(cfg.run_path / "last.pth")
    assert last["step"] == 2
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert max(r["step"] for r in read_metrics(cfg.run_path)) == 3


def test_init_loads_fitting_weights_only(tmp_path):
    cfg = tiny_config(tmp_path, train={"iterations": 1, "val_interval": 5})
    train(cfg)
    trained = _weights(cfg.run_path / "last.pth")
    model_cfg = {**cfg.model.to_dict(), "num_classes": 3}  # another head: the head is skipped
    torch.manual_seed(1)
    model = build_model(model_cfg)
    load_init_weights(model, cfg.run_path / "last.pth")
    state = model.state_dict()
    assert torch.equal(state["encoder.block0.0.weight"], trained["encoder.block0.0.weight"])
    assert state["head.weight"].shape[0] == 3

    # a run started with init= begins from those weights and has its own optimizer and step
    tuned = tiny_config(tmp_path, "tuned", train={"iterations": 1, "val_interval": 5})
    assert train(tuned, init=cfg.run_path / "last.pth")["step"] == 1


def _torchrun(*args, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_ddp_two_processes_train_and_evaluate_like_one(tmp_path):
    # 2 processes x batch 1 take the draws of 1 process x 2 micro-batches of 1, and DDP's averaged
    # gradient is the accumulated one; the DDP run is stopped after 2 of its 3 iterations and resumed
    # under torchrun
    sections = {
        "model": {"dropout_p": 0.0},
        "data": {"scale_range": [1.0, 1.0], "shapes_val_length": 5},  # 5 val images: shards of 3 and 2
        "train": {"iterations": 3, "val_interval": 3, "optimizer": "sgd", "lr": 0.01},
    }
    config = write_config(tmp_path / "tiny.yaml", tiny_dict(tmp_path, "ddp", **sections))
    _torchrun(str(ROOT / "tools" / "train.py"), str(config), "--set", "train.batch_size=1", "--stop-at", "2")
    run = tmp_path / "runs" / "ddp"
    assert load_checkpoint(run / "last.pth")["step"] == 2
    _torchrun(str(ROOT / "tools" / "train.py"), "--resume", str(run))
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2, 3]
    last = load_checkpoint(run / "last.pth")
    assert last["step"] == 3 and len(last["rng_per_rank"]) == 2
    # the validation pictures: written once, by the main process, though each process validated a shard
    assert sorted(p.name for p in (run / "vis").rglob("*")) == ["3", *(f"val_{i:06d}.png" for i in range(4))]
    single = tiny_config(tmp_path, "single", **sections)
    single.train.batch_size, single.train.accumulate = 1, 2
    train(single)
    _assert_same_weights(last["model"], _weights(single.run_path / "last.pth"), atol=1e-6)

    # evaluation split over 2 processes gives the single-process confusion counts exactly
    _torchrun(str(ROOT / "tools" / "eval.py"), str(run), "--out", str(tmp_path / "ddp_eval"))
    ddp_report = json.loads((tmp_path / "ddp_eval" / "eval_val.json").read_text())
    report, _ = evaluate_checkpoint(load_config(run / "config.yaml"), run / "best.pth", progress=False)
    assert ddp_report["pixels"] == report["pixels"] == 5 * 32 * 32
    assert ddp_report["classes"] == report["classes"] and ddp_report["miou"] == report["miou"]
    assert ddp_report["miou"] == last["best"]["miou"]  # validation during DDP training agrees too


def test_resume_keeps_a_best_score_from_before_the_interruption(tmp_path, monkeypatch):
    # validation scores fall after iteration 2, so the best of the run is the one before the stop
    scores = {2: 0.9, 4: 0.5, 6: 0.4}
    report = trainer_module.metrics_report

    def scripted(cm, classes, **extra):
        return {**report(cm, classes, **extra), "miou": scores[extra["step"]]}

    monkeypatch.setattr(trainer_module, "metrics_report", scripted)
    cfg = tiny_config(tmp_path, train={"iterations": 6})
    assert train(cfg, stop_at=4)["best"] == {"miou": 0.9, "step": 2}
    summary = train(cfg, run_dir=cfg.run_path, resume=True)
    assert summary["step"] == 6 and summary["best"] == {"miou": 0.9, "step": 2}
    assert load_checkpoint(cfg.run_path / "last.pth")["best"] == {"miou": 0.9, "step": 2}
    best = load_checkpoint(cfg.run_path / "best.pth")
    assert best["step"] == 2 and best["best"] == {"miou": 0.9, "step": 2}  # not replaced by a worse model


def test_grad_clip_scales_the_gradient_down_to_its_norm(tmp_path):
    # SGD without momentum or weight decay moves the weights by lr x gradient: from the same state, the
    # clipped step is the unclipped one scaled to norm lr x grad_clip
    sections = {"train": {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 1.0}}
    plain = tiny_config(tmp_path, "plain", **sections)
    train(plain, stop_at=1)
    clipped = tiny_config(tmp_path, "clipped", **merge(sections, {"train": {"grad_clip": 0.05}}))
    shutil.copytree(plain.run_path, clipped.run_path)
    start = _weights(plain.run_path / "last.pth")
    steps = {}
    for cfg in (plain, clipped):
        train(cfg, run_dir=cfg.run_path, resume=True, stop_at=2)
        end = _weights(cfg.run_path / "last.pth")
        steps[cfg.name] = torch.cat([(end[k] - start[k]).flatten() for k in start])
    lr = next(r["lr"] for r in read_metrics(clipped.run_path) if r["kind"] == "train" and r["step"] == 2)
    assert steps["plain"].norm() > 2 * lr * 0.05  # the gradient is larger than the bound
    assert steps["clipped"].norm().item() == pytest.approx(lr * 0.05, rel=1e-3)
    scale = steps["clipped"].norm() / steps["plain"].norm()
    torch.testing.assert_close(steps["clipped"], steps["plain"] * scale, rtol=0, atol=1e-6)
