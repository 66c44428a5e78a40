"""Confusion-matrix segmentation metrics (IoU, accuracy), summable across processes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pixel pairs; rows are ground truth, columns predictions."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero all counts."""
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of integer predictions and targets (same shape); target == ignore_index is skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        n = self.num_classes
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        bad = (target < 0) | (target >= n)
        if bad.any():
            values = torch.unique(target[bad]).tolist()[:10]
            raise ValueError(
                f"target labels {values} are outside 0..{n - 1} and are not ignore_index {self.ignore_index}"
            )
        if ((pred < 0) | (pred >= n)).any():
            raise ValueError(f"predictions must lie in 0..{n - 1}")
        counts = torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        self.mat += counts.to(self.mat.device)

    def reduce_from_all_processes(self) -> None:
        """Sum the counts over all processes when torch.distributed is initialized."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, float | list[float]]:
        """IoU and accuracy per class, and mIoU, mAcc, aAcc; classes with no pixels are NaN and skipped."""
        mat = self.mat.double().cpu()
        tp = mat.diag()
        gt, pr = mat.sum(1), mat.sum(0)
        iou = tp / (gt + pr - tp)  # 0/0 = NaN: class absent from both ground truth and prediction
        acc = tp / gt  # NaN: class absent from ground truth
        return {
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "miou": iou.nanmean().item(),
            "macc": acc.nanmean().item(),
            "aacc": (tp.sum() / mat.sum()).item(),
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A per-class console table of IoU and Acc in percent, with a summary line."""
        m = self.compute()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        assert len(names) == self.num_classes, "one name per class"
        width = max(5, *(len(name) for name in names))

        def pct(x: float) -> str:
            return f"{'-':>7}" if math.isnan(x) else f"{100 * x:7.2f}"

        lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
        rows = zip(names, m["iou"], m["acc"], strict=True)
        lines += [f"{name:<{width}}  {pct(i)}  {pct(a)}" for name, i, a in rows]
        summary = "  ".join(
            f"{label} {pct(m[key]).strip()}"
            for label, key in (("aAcc", "aacc"), ("mIoU", "miou"), ("mAcc", "macc"))
        )
        lines += ["-" * (width + 18), summary]
        return "\n".join(lines)
