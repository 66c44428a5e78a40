import logging

import pytest
import torch
from opacus.optimizers import DPOptimizer

from segkn.config import ConfigError
from segkn.engine.checkpoint import load_checkpoint
from segkn.engine.loaders import PoissonSteps
from segkn.engine.losses import SegmentationLoss
from segkn.engine.privacy import make_private, per_sample_gradients, private_step
from segkn.engine.run_log import read_metrics
from segkn.engine.trainer import train
from segkn.models import build_model

from ._configs import tiny_config

NUM_CLASSES = 3


def _model(arch, encoder, norm, dropout_p=0.0, **extra):
    kw = {"arch": arch, "encoder": encoder, "norm": norm, "num_classes": NUM_CLASSES, "dropout_p": dropout_p}
    kw.update(decoder_dropout=0.0, **extra)
    if arch == "unet":
        kw.update(encoder_depth=3, decoder_channels=[8, 8, 8])
    else:
        kw.update(decoder_channels=16)
    return build_model(kw)


def _batch(n=2, size=32, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    masks = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)
    masks[0, :4] = 255  # ignored pixels take no part
    return images, masks


def _loop_gradients(model, criterion, images, masks):
    """Each sample's gradient from its own backward pass, in the model's eager training path."""
    out = []
    for i in range(len(images)):
        model.zero_grad(set_to_none=True)
        criterion(model(images[i : i + 1]), masks[i : i + 1]).backward()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        out.append({n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in params})
    return out


CASES = [
    pytest.param("unet", "knresnet18", "kn", id="unet-knresnet18"),
    pytest.param("unet", "resnet18", "kn", id="unet-resnet18-kn"),
    pytest.param("unet", "resnet18", "gn", id="unet-resnet18-gn"),
    pytest.param("deeplabv3", "knresnet18", "kn", id="deeplabv3-knresnet18", marks=pytest.mark.slow),
    pytest.param("deeplabv3", "resnet18", "kn", id="deeplabv3-resnet18-kn", marks=pytest.mark.slow),
    pytest.param("deeplabv3plus", "knresnet18", "kn", id="deeplabv3plus-knresnet18", marks=pytest.mark.slow),
    pytest.param("deeplabv3plus", "resnet18", "kn", id="deeplabv3plus-resnet18-kn", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch, encoder, norm", CASES)
def test_per_sample_gradients_equal_a_loop_over_samples(arch, encoder, norm):
    torch.manual_seed(0)
    model = _model(arch, encoder, norm).double().train()
    criterion = SegmentationLoss()
    images, masks = _batch()
    grads, losses = per_sample_gradients(model, criterion, images, masks)
    for i, expected in enumerate(_loop_gradients(model, criterion, images, masks)):
        for name, g in expected.items():
            torch.testing.assert_close(grads[name][i], g, rtol=0, atol=1e-6, msg=f"sample {i}: {name}")
        assert losses[i].item() == pytest.approx(criterion(model(images[i : i + 1]), masks[i : i + 1]).item())


def test_per_sample_gradients_with_the_dice_term_equal_a_loop_over_samples():
    torch.manual_seed(0)
    model = _model("unet", "knresnet18", "kn").double().train()
    criterion = SegmentationLoss(dice_weight=0.5)  # each sample's own Dice, as in a batch of one
    images, masks = _batch(3)
    grads, _ = per_sample_gradients(model, criterion, images, masks)
    for i, expected in enumerate(_loop_gradients(model, criterion, images, masks)):
        for name, g in expected.items():
            torch.testing.assert_close(grads[name][i], g, rtol=0, atol=1e-6, msg=f"sample {i}: {name}")


def test_the_lovasz_term_is_refused_with_privacy(tmp_path):
    with pytest.raises(ConfigError, match=r"train.lovasz_weight.*must be 0 with privacy.*dice_weight works"):
        tiny_config(tmp_path, privacy=DP, train={"lovasz_weight": 0.5})


def _dp_optimizer(model, noise=0.0, clip=1.0, expected_batch=3, seed=None):
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DPOptimizer(
        sgd,
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        generator=generator,
    )


def _step_update(model, chunks, noise=0.0, clip=1.0, seed=None):
    """The weight change of one `private_step` with SGD at lr 1: minus the privatized mean gradient."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = _dp_optimizer(model, noise, clip, sum(len(c[0]) for c in chunks if c is not None), seed)
    private_step(model, chunks, SegmentationLoss(), optimizer)
    update = {n: before[n] - p.detach() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    return update


def _norm(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values()))


def test_clipped_per_sample_gradients_are_bounded_and_averaged():
    torch.manual_seed(0)
    model = _model("unet", "knresnet18", "kn").double().train()
    images, masks = _batch(3)
    clip = 0.05
    update = _step_update(model, [(images, masks)], clip=clip)
    loop = _loop_gradients(model, SegmentationLoss(), images, masks)
    clipped = []
    for g in loop:
        factor = min(1.0, clip / (_norm(g).item() + 1e-6))
        assert _norm(g) > clip  # the test clips for real
        clipped.append({n: t * factor for n, t in g.items()})
        assert _norm(clipped[-1]) <= clip
    for name, u in update.items():
        expected = sum(c[name] for c in clipped) / 3
        torch.testing.assert_close(u, expected, rtol=0, atol=1e-9, msg=name)
    assert _norm(update) <= clip  # the mean of vectors no longer than C


def test_accumulated_chunks_are_clipped_per_sample_and_noised_once():
    torch.manual_seed(0)
    model = _model("unet", "knresnet18", "kn").double().train()
    images, masks = _batch(3)
    whole = _step_update(model, [(images, masks)], noise=1.0, clip=0.05, seed=7)
    parts = [(images[:2], masks[:2]), None, (images[2:], masks[2:])]  # an empty chunk counts for nothing
    split = _step_update(model, parts, noise=1.0, clip=0.05, seed=7)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-9, msg=name)
    quiet = _step_update(model, [(images, masks)], noise=0.0, clip=0.05)
    assert not torch.allclose(whole["head.weight"], quiet["head.weight"])


def test_a_non_finite_loss_stops_the_step_before_the_weights_change():
    from segkn.engine.step import NonFiniteLoss

    torch.manual_seed(0)
    model = _model("unet", "knresnet18", "kn").double().train()
    images, masks = _batch(3)
    images[1] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLoss):
        private_step(
            model,
            [(images[:2], masks[:2]), (images[2:], masks[2:])],
            SegmentationLoss(),
            _dp_optimizer(model),
        )
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_kn_statistics_dropout_draws_per_sample_and_runs():
    torch.manual_seed(0)
    model = _model("unet", "knresnet18", "kn", dropout_p=0.1).train()
    images, masks = _batch(2, dtype=torch.float32)
    grads, losses = per_sample_gradients(model, SegmentationLoss(), images, masks)
    assert torch.isfinite(losses).all() and all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("norm, decoder_norm", [("bn", "bn"), ("kn", "bn")])
def test_a_model_with_batchnorm_is_refused(tmp_path, norm, decoder_norm):
    cfg = tiny_config(
        tmp_path,
        model={"encoder": "resnet18", "norm": norm, "decoder_norm": decoder_norm},
        privacy={"enabled": True, "noise_multiplier": 1.0},
    )
    model = build_model(cfg.model.to_dict() | {"num_classes": 5})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        ConfigError, match=r"BatchNorm2d .*batch.*per-sample gradients .*meaningless.*norm: kn"
    ):
        make_private(cfg, model, optimizer, 8)


def test_poisson_steps_of_several_processes_make_up_the_one_process_draw():
    one = PoissonSteps(40, 0.3, 4, seed=5)
    parts = [PoissonSteps(40, 0.3, 4, seed=5, rank=r, world_size=3) for r in range(3)]
    for step in range(3):
        whole = [d for chunk in one.chunks(step) for d in chunk]
        split = [[d for chunk in p.chunks(step) for d in chunk] for p in parts]
        assert all(i % 3 == r for r, part in enumerate(split) for i, _ in part)
        assert sorted(d for part in split for d in part) == whole and len(whole) > 6


def test_poisson_steps_depend_on_seed_and_step_only():
    steps = PoissonSteps(50, 0.2, 4, seed=3)
    first = steps.chunks(5)
    assert first == PoissonSteps(50, 0.2, 4, seed=3, start=5).chunks(5)
    assert first != steps.chunks(6)
    assert all(0 < len(c) <= 4 for c in first)
    assert PoissonSteps(50, 0.0, 4, seed=3).chunks(0) == [[]]
    sizes = [sum(len(c) for c in steps.chunks(t)) for t in range(200)]
    assert 8 < sum(sizes) / len(sizes) < 12  # 50 * 0.2 expected


# ---- training runs ------------------------------------------------------------------------------------

DP = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}
QUIET = {"val_interval": 100, "checkpoint_interval": 2}  # validation only at the end


def _epsilons(run):
    return [r["epsilon"] for r in read_metrics(run) if r["kind"] == "train"]


def test_private_run_records_epsilon_everywhere_and_resume_keeps_the_budget(tmp_path):
    cfg = tiny_config(tmp_path, privacy=DP, train=QUIET)
    train(cfg)
    run = cfg.run_path
    eps = _epsilons(run)
    assert len(eps) == 4 and eps == sorted(eps) and eps[0] > 0
    last, best = load_checkpoint(run / "last.pth"), load_checkpoint(run / "best.pth")
    assert last["privacy"]["epsilon"] == pytest.approx(eps[-1]) and last["privacy"]["history"] == [
        [1.0, 0.25, 4]
    ]
    assert best["privacy"]["epsilon"] == pytest.approx(eps[-1])
    assert f"epsilon {eps[-1]:.4g}" in (run / "train.log").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [s.value for s in events.Scalars("train/epsilon")] == pytest.approx(eps)

    parts = tiny_config(tmp_path, name="parts", privacy=DP, train=QUIET)
    train(parts, stop_at=2)
    assert load_checkpoint(parts.run_path / "last.pth")["privacy"]["history"] == [[1.0, 0.25, 2]]
    train(parts, run_dir=parts.run_path, resume=True)
    resumed = load_checkpoint(parts.run_path / "last.pth")
    assert resumed["privacy"]["history"] == last["privacy"]["history"]
    assert resumed["privacy"]["epsilon"] == last["privacy"]["epsilon"]
    assert _epsilons(parts.run_path) == eps
    for key, value in last["model"].items():  # the same Poisson draws, noise and dropout after the restart
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)


def test_max_epsilon_stops_the_run_before_it_is_exceeded(tmp_path, caplog):
    cfg = tiny_config(tmp_path, privacy={**DP, "max_epsilon": 4.5}, train={**QUIET, "iterations": 6})
    with caplog.at_level(logging.WARNING, logger="segkn"):
        summary = train(cfg)
    eps = _epsilons(cfg.run_path)
    assert summary["step"] == len(eps) < 6
    last = load_checkpoint(cfg.run_path / "last.pth")
    assert last["step"] == summary["step"] and summary["best"]["step"] == summary["step"]
    assert summary["step"] == 3 and eps[-1] <= 4.5  # epsilon 4.42 after 3 steps, 4.87 after 4
    assert "privacy budget is spent" in caplog.text and "> privacy.max_epsilon 4.5" in caplog.text
    assert train(cfg, run_dir=cfg.run_path, resume=True)["step"] == summary["step"]  # no step beyond it


def test_target_epsilon_is_reached_at_the_last_iteration_with_accumulation(tmp_path):
    dp = {"enabled": True, "target_epsilon": 6.0, "max_grad_norm": 0.5}
    cfg = tiny_config(tmp_path, privacy=dp, train={**QUIET, "batch_size": 1, "accumulate": 2})
    train(cfg)
    privacy = load_checkpoint(cfg.run_path / "last.pth")["privacy"]
    assert privacy["sample_rate"] == 0.25 and 5.9 < privacy["epsilon"] <= 6.0


def test_without_poisson_sampling_the_loader_batches_are_used(tmp_path):
    cfg = tiny_config(tmp_path, privacy={**DP, "poisson_sampling": False}, train={**QUIET, "iterations": 2})
    assert train(cfg)["step"] == 2
    assert load_checkpoint(cfg.run_path / "last.pth")["privacy"]["history"] == [[1.0, 0.25, 2]]


def test_resume_cannot_switch_privacy_on_or_off(tmp_path):
    cfg = tiny_config(tmp_path, train={**QUIET, "iterations": 1})
    train(cfg)
    private = tiny_config(tmp_path, privacy=DP, train={**QUIET, "iterations": 2})
    with pytest.raises(ConfigError, match="trained without privacy"):
        train(private, run_dir=cfg.run_path, resume=True)
    train(private, run_dir=tmp_path / "private")
    with pytest.raises(ConfigError, match="trained with privacy .*would void its guarantee"):
        train(
            tiny_config(tmp_path, train={**QUIET, "iterations": 3}), run_dir=tmp_path / "private", resume=True
        )


def test_a_budget_too_small_for_one_step_trains_nothing(tmp_path):
    cfg = tiny_config(tmp_path, privacy={**DP, "max_epsilon": 3.0}, train=QUIET)  # one step spends 3.08
    assert train(cfg)["step"] == 0


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_with_the_noise_added_once_and_stop_together(tmp_path):
    import torch.multiprocessing as mp

    from ._configs import tiny_dict
    from ._workers import private_worker

    no_dropout = {"dropout_p": 0.0}
    one = tiny_config(tmp_path, name="one", model=no_dropout, privacy=DP, train=QUIET)
    train(one)
    two = tiny_dict(tmp_path, name="two", model=no_dropout, privacy=DP, train={**QUIET, "batch_size": 1})
    # fork: the processes start with what this one has imported
    args = (2, _free_port(), two, str(tmp_path))
    mp.start_processes(private_worker, args=args, nprocs=2, join=True, start_method="fork")

    # process 0 alone adds N(0, (sigma C)^2) to the sum; the mean divides by the global batch (2)
    noise = [torch.load(tmp_path / f"noise{r}.pt") for r in range(2)]
    assert torch.equal(noise[0], noise[1])
    assert noise[0].std().item() == pytest.approx(1.0 * 1.0 / 2, rel=0.03)  # twice the noise: 0.71
    # a NaN loss on one process stops both (none waits in the gradients' all-reduce)
    assert [(tmp_path / f"nan{r}.txt").read_text() for r in range(2)] == ["stopped", "stopped"]

    # the two processes' Poisson parts make up the one process's batch: the same weights and budget
    run_one, run_two = one.run_path, tmp_path / "runs" / "two"
    assert _epsilons(run_two) == pytest.approx(_epsilons(run_one))
    a, b = load_checkpoint(run_one / "last.pth"), load_checkpoint(run_two / "last.pth")
    assert a["privacy"]["history"] == b["privacy"]["history"] == [[1.0, 0.25, 4]]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
