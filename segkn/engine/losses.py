"""The training loss: cross-entropy with ignored pixels, plus optional Dice and Lovasz terms by weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkn.data import IGNORE_INDEX

__all__ = ["SegmentationLoss", "dice_loss"]


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1e-7) -> Tensor:
    """Multiclass soft Dice loss: ``1 - 2|P n T| / (|P| + |T|)`` per class over the labelled pixels of the
    whole batch (P: softmax probabilities, T: one-hot labels), 0 for a class that no label has, averaged
    over all K classes. Free of data-dependent control flow, so ``torch.func.vmap`` can take it per
    sample (DP-SGD)."""
    probs = logits.float().log_softmax(dim=1).exp().flatten(2)  # (N, K, P), computed as smp computes it
    labels = target.flatten(1)  # (N, P)
    labelled = (labels != ignore_index).unsqueeze(1)
    classes = torch.arange(probs.shape[1], device=labels.device)
    onehot = ((labels.unsqueeze(2) == classes).permute(0, 2, 1) & labelled).to(probs.dtype)
    probs = probs * labelled
    # |P n T| = (|P| + |T| - |P - T|_1) / 2 and 2|P n T| / (|P| + |T|) in the Tversky form (alpha = beta =
    # 1/2), the order of operations of segmentation_models_pytorch's DiceLoss, so that results match it
    p_sum, t_sum = probs.sum(dim=(0, 2)), onehot.sum(dim=(0, 2))
    intersection = (p_sum + t_sum - torch.linalg.vector_norm(probs - onehot, ord=1, dim=(0, 2))) / 2
    fp, fn = p_sum - intersection, t_sum - intersection
    score = intersection / (intersection + 0.5 * fp + 0.5 * fn).clamp_min(eps)
    return ((1.0 - score) * (t_sum > 0)).mean()


class SegmentationLoss(nn.Module):
    """``CE + dice_weight * Dice + lovasz_weight * Lovasz`` on logits (N, K, H, W) and labels (N, H, W).

    Pixels labelled ``ignore_index`` take no part. The cross-entropy is the mean over labelled pixels;
    a batch without any (e.g. a crop that fell on padding only) gives 0, not NaN, for every term.
    """

    def __init__(
        self, dice_weight: float = 0.0, lovasz_weight: float = 0.0, ignore_index: int = IGNORE_INDEX
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.dice_weight, self.lovasz_weight = dice_weight, lovasz_weight
        self.lovasz = None
        if lovasz_weight > 0:
            from segmentation_models_pytorch.losses import LovaszLoss

            self.lovasz = LovaszLoss("multiclass", ignore_index=ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        labelled = (target != self.ignore_index).sum().clamp_min(1)
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum") / labelled
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * dice_loss(logits, target, self.ignore_index)
        if self.lovasz is not None:
            # smp's Lovasz term is an empty tensor, not 0, when no pixel is labelled
            loss = loss + self.lovasz_weight * self.lovasz(logits, target).sum()
        return loss

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, lovasz_weight={self.lovasz_weight}"
