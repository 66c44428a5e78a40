"""SegmentationLoss: each term against its formula written out by hand, on small tensors with ignored
pixels and a class that no label has."""

import numpy as np
import pytest
import torch

from segkn.engine.losses import SegmentationLoss

K = 4  # class 3 appears in no label


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 3, 5, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, K - 1, (2, 3, 5), generator=g)
    target[0, 0, :3] = 255
    target[1, 2, 4] = 255
    return logits, target


def _labelled(logits, target):
    """Softmax probabilities (P, K) and labels (P,) of the labelled pixels, as numpy float64."""
    probs = torch.softmax(logits.double(), 1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).numpy()
    labels = target.reshape(-1).numpy()
    keep = labels != 255
    return probs[keep], labels[keep]


def cross_entropy(logits, target):
    probs, labels = _labelled(logits, target)
    return float(np.mean([-np.log(p[y]) for p, y in zip(probs, labels, strict=True)]))


def dice(logits, target):
    """1 - 2|P n T| / (|P| + |T|) per class over the labelled pixels of the whole batch; a class no label
    has counts 0, and the mean is over all K classes."""
    probs, labels = _labelled(logits, target)
    losses = []
    for c in range(probs.shape[1]):
        t = (labels == c).astype(float)
        if t.sum() == 0:
            losses.append(0.0)
            continue
        p = probs[:, c]
        losses.append(1 - 2 * (p * t).sum() / (p.sum() + t.sum()))
    return float(np.mean(losses))


def jaccard_loss(errors_set, fg):
    """1 - IoU of class c when the pixels in ``errors_set`` are mispredicted (fg: set of class-c pixels)."""
    union = fg | errors_set
    return 0.0 if not union else 1 - len(fg - errors_set) / len(union)


def lovasz(logits, target):
    """Lovasz-softmax: per class present in the labels, the Lovasz extension of its Jaccard loss at the
    errors |1[y = c] - p_c|, i.e. sum_i e_(i) * (J({1..i}) - J({1..i-1})) over errors sorted high to
    low; the mean over the present classes."""
    probs, labels = _labelled(logits, target)
    losses = []
    for c in range(probs.shape[1]):
        fg = {i for i, y in enumerate(labels) if y == c}
        if not fg:
            continue
        errors = np.abs((labels == c).astype(float) - probs[:, c])
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        total, chosen = 0.0, set()
        for i in order:
            before = jaccard_loss(chosen, fg)
            chosen.add(i)
            total += errors[i] * (jaccard_loss(chosen, fg) - before)
        losses.append(total)
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", [0, 1])
def test_each_term_equals_its_formula(seed):
    logits, target = _batch(seed)
    assert SegmentationLoss()(logits, target).item() == pytest.approx(cross_entropy(logits, target), rel=1e-6)
    only_dice = SegmentationLoss(dice_weight=1.0)(logits, target) - SegmentationLoss()(logits, target)
    assert only_dice.item() == pytest.approx(dice(logits, target), rel=1e-5)
    only_lovasz = SegmentationLoss(lovasz_weight=1.0)(logits, target) - SegmentationLoss()(logits, target)
    assert only_lovasz.item() == pytest.approx(lovasz(logits, target), rel=1e-5)


def test_weights_scale_their_terms():
    logits, target = _batch()
    ce, d, lv = cross_entropy(logits, target), dice(logits, target), lovasz(logits, target)
    assert d > 0.1 and lv > 0.1  # far from zero, so a dropped term shows
    got = SegmentationLoss(dice_weight=0.5, lovasz_weight=2.0)(logits, target).item()
    assert got == pytest.approx(ce + 0.5 * d + 2.0 * lv, rel=1e-5)
    assert SegmentationLoss(dice_weight=0.0, lovasz_weight=0.0)(logits, target).item() == pytest.approx(ce)


def test_ignored_pixels_take_no_part():
    logits, target = _batch()
    loss = SegmentationLoss(dice_weight=1.0, lovasz_weight=1.0)
    changed = logits.clone()
    changed[target[:, None].expand_as(changed) == 255] = 1e3  # wild logits where the label is ignored
    changed = changed.requires_grad_()
    assert loss(changed, target).item() == pytest.approx(loss(logits, target).item(), rel=1e-9)
    loss(changed, target).backward()
    assert (changed.grad[target[:, None].expand_as(changed) == 255] == 0).all()


@pytest.mark.parametrize("weights", [(0.0, 0.0), (0.5, 0.5)])
def test_a_batch_of_only_ignored_pixels_gives_zero_and_zero_gradients(weights):
    logits = torch.randn(2, K, 3, 5, requires_grad=True)
    target = torch.full((2, 3, 5), 255)
    loss = SegmentationLoss(*weights)(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_half_precision_logits_are_scored_in_float32():
    logits, target = _batch()
    half = SegmentationLoss(dice_weight=1.0)(logits.to(torch.bfloat16), target)
    assert half.dtype == torch.float32
    rounded = logits.to(torch.bfloat16).double()
    assert half.item() == pytest.approx(cross_entropy(rounded, target) + dice(rounded, target), rel=1e-5)


def test_dice_term_equals_segmentation_models_pytorch_bit_for_bit():
    from segmentation_models_pytorch.losses import DiceLoss

    from segkn.engine.losses import dice_loss

    torch.manual_seed(0)
    for shape in [(4, 3, 16, 16), (2, 5, 7, 9)]:
        logits = torch.randn(*shape, requires_grad=True)
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]))
        target[0, :2] = 255
        theirs = DiceLoss("multiclass", ignore_index=255)(logits, target)
        ours = dice_loss(logits, target)
        assert torch.equal(ours, theirs)
        assert torch.equal(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(theirs, logits)[0])
