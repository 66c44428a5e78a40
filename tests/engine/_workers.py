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
