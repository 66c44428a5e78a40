import io

import pytest
import torch
from torch import nn

from segkn.engine.schedules import build_optimizer, build_scheduler


def run(scheduler, optimizer, steps):
    for _ in range(steps):
        optimizer.step()
        scheduler.step()


def make(lr=0.01, **kwargs):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    optimizer = build_optimizer(model, "sgd", lr=lr, momentum=0.9, weight_decay=5e-4)
    return optimizer, build_scheduler(optimizer, **kwargs)


def lr(optimizer):
    return optimizer.param_groups[0]["lr"]


def test_poly_values_with_warmup():
    total, warm, ratio, min_lr, base = 1000, 100, 0.1, 1e-4, 0.01
    optimizer, scheduler = make(
        total_iters=total, power=0.9, warmup_iters=warm, warmup_ratio=ratio, min_lr=min_lr
    )

    def poly(t):
        return (base - min_lr) * (1 - t / total) ** 0.9 + min_lr

    assert lr(optimizer) == pytest.approx(poly(0) * ratio)  # step 0: warmup start
    run(scheduler, optimizer, 50)
    assert lr(optimizer) == pytest.approx(poly(50) * (ratio + (1 - ratio) * 0.5))
    run(scheduler, optimizer, 50)
    assert lr(optimizer) == pytest.approx(poly(100))  # warmup end joins the poly curve
    run(scheduler, optimizer, 400)
    assert lr(optimizer) == pytest.approx(poly(500))
    run(scheduler, optimizer, 500)
    assert lr(optimizer) == pytest.approx(min_lr)  # end
    run(scheduler, optimizer, 10)
    assert lr(optimizer) == pytest.approx(min_lr)  # stays there past the end
    assert all(g["lr"] == pytest.approx(min_lr) for g in optimizer.param_groups)


def test_no_warmup_starts_at_base_lr():
    optimizer, scheduler = make(total_iters=10, power=1.0)
    assert lr(optimizer) == pytest.approx(0.01)
    run(scheduler, optimizer, 5)
    assert lr(optimizer) == pytest.approx(0.005)


def test_resume_from_state_dict():
    kwargs = dict(total_iters=200, power=0.9, warmup_iters=20, warmup_ratio=1e-6, min_lr=1e-4)
    optimizer, scheduler = make(**kwargs)
    run(scheduler, optimizer, 37)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)  # as in a checkpoint: plain values only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    reference = []
    for _ in range(50):
        run(scheduler, optimizer, 1)
        reference.append(lr(optimizer))

    optimizer2, scheduler2 = make(**kwargs)
    scheduler2.load_state_dict(state)
    resumed = []
    for _ in range(50):
        run(scheduler2, optimizer2, 1)
        resumed.append(lr(optimizer2))
    assert resumed == pytest.approx(reference)


def test_weight_decay_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    for name in ("sgd", "adamw"):
        optimizer = build_optimizer(model, name, lr=0.1, momentum=0.9, weight_decay=1e-2)
        decay, no_decay = optimizer.param_groups
        assert decay["weight_decay"] == 1e-2 and no_decay["weight_decay"] == 0.0
        assert [tuple(p.shape) for p in decay["params"]] == [(4, 3, 3, 3)]
        assert len(no_decay["params"]) == 4  # conv bias, bn weight and bias, linear bias
    assert isinstance(build_optimizer(model, "adamw", lr=0.1), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer(model, "adam", lr=0.1)


def test_bad_schedule_arguments():
    optimizer, _ = make(total_iters=10)
    with pytest.raises(ValueError, match="bad schedule"):
        build_scheduler(optimizer, total_iters=10, warmup_iters=20)
    with pytest.raises(ValueError, match="min_lr"):
        build_scheduler(optimizer, total_iters=10, min_lr=1.0)
