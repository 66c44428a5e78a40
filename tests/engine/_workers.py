"""Helpers for test_metrics that spawned processes import (kept free of heavy test-only imports)."""

import torch
import torch.distributed as dist

from segkn.engine.metrics import ConfusionMatrix


def random_batch(num_classes, shape=(4, 33, 47), seed=0, ignore_frac=0.1):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    # predictions agree with the target 60% of the time so IoUs are far from trivial
    pred = torch.where(
        torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, num_classes, shape, generator=g)
    )
    target[torch.rand(shape, generator=g) < ignore_frac] = 255
    return pred, target


def reduce_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        pred, target = random_batch(5, seed=rank)
        cm = ConfusionMatrix(5)
        cm.update(pred, target)
        torch.save(cm.mat.clone(), f"{out_dir}/local{rank}.pt")
        cm.reduce_from_all_processes()
        torch.save(cm.mat, f"{out_dir}/reduced{rank}.pt")
    finally:
        dist.destroy_process_group()


def private_worker(rank, world_size, port, config, out_dir):
    """One process of a private run: first one DP step on a model whose big parameter gets no gradient
    (its update is the noise alone), then ``train(config)``; the noise update is saved per rank."""
    import os

    from torch import nn

    from segkn.config import PrivacyConfig, config_from_dict
    from segkn.engine import distributed
    from segkn.engine.losses import SegmentationLoss
    from segkn.engine.privacy import PrivateTraining, private_step
    from segkn.engine.step import NonFiniteLoss
    from segkn.engine.trainer import train

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)

    class Pixelwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 3, 1)
            self.unused = nn.Parameter(torch.zeros(50_000))

        def forward(self, x):
            return self.head(x)

    with distributed.process_group("cpu"):
        torch.manual_seed(0)
        model = Pixelwise()
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        settings = PrivacyConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0)
        private = PrivateTraining(settings, model, sgd, 100, batch_size=1, accumulate=1, iterations=1)
        images, masks = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
        private_step(model, [(images, masks)], SegmentationLoss(), private.optimizer)
        torch.save(model.unused.detach().clone(), f"{out_dir}/noise{rank}.pt")
        # a non-finite loss on process 1 alone stops the step on both, before any weight changes
        weights = model.head.weight.detach().clone()
        nan = torch.full_like(images, float("nan")) if rank == 1 else images
        try:
            private_step(model, [(nan, masks)], SegmentationLoss(), private.optimizer)
            outcome = "stepped"
        except NonFiniteLoss:
            outcome = "stopped" if torch.equal(model.head.weight, weights) else "stopped after a change"
        with open(f"{out_dir}/nan{rank}.txt", "w") as f:
            f.write(outcome)
    train(config_from_dict(config))
