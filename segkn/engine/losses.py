"""The training loss: cross-entropy with ignored pixels, plus optional Dice and Lovasz terms by weight."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segkn.data import IGNORE_INDEX

__all__ = ["SegmentationLoss"]


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
        self.dice = self.lovasz = None
        if dice_weight > 0 or lovasz_weight > 0:
            from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss

            if dice_weight > 0:
                self.dice = DiceLoss("multiclass", ignore_index=ignore_index)
            if lovasz_weight > 0:
                self.lovasz = LovaszLoss("multiclass", ignore_index=ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        labelled = (target != self.ignore_index).sum().clamp_min(1)
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum") / labelled
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(logits, target)
        if self.lovasz is not None:
            # smp's Lovasz term is an empty tensor, not 0, when no pixel is labelled
            loss = loss + self.lovasz_weight * self.lovasz(logits, target).sum()
        return loss

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, lovasz_weight={self.lovasz_weight}"
