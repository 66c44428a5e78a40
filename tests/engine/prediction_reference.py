"""Sliding-window and test-time-augmentation predictions spelled out by hand, one window and one view at
a time, to check segkn's prediction against; and a model for which every one of those steps matters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PositionModel(nn.Module):
    """Logits that depend on each pixel's neighbourhood (a zero-padded, asymmetric 5 x 9 convolution) and
    on its row and column in the input it is given (a coordinate head). So a window's logits differ from
    the whole image's, a mirror image's are not the mirror of the image's, and a rescaled image's are not
    a rescaling of the image's."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, num_classes, (5, 9), padding=(2, 4))
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(num_classes, generator=g))
        self.coords = nn.Parameter(torch.randn(num_classes, 2, generator=g) * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        rows = torch.linspace(0, 1, h, dtype=x.dtype)
        cols = torch.linspace(0, 1, w, dtype=x.dtype)
        ry, rx = self.coords[:, 0].view(-1, 1, 1), self.coords[:, 1].view(-1, 1, 1)
        return self.conv(x) + ry * rows.view(1, h, 1) + rx * cols.view(1, 1, w)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets every ``stride`` pixels, plus one flush with the far edge."""
    crop = min(crop, size)
    return sorted(set(range(0, size - crop + 1, stride)) | {size - crop})


@torch.no_grad()
def window_average(model: nn.Module, x: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """At each pixel, the mean of the logits of every window that covers it (each window run alone)."""
    n, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    total, count = None, torch.zeros(h, w, dtype=torch.float64)
    for y in window_starts(h, ch, stride[0]):
        for x0 in window_starts(w, cw, stride[1]):
            logits = model(x[:, :, y : y + ch, x0 : x0 + cw]).double()
            if total is None:
                total = torch.zeros(n, logits.shape[1], h, w, dtype=torch.float64)
            total[:, :, y : y + ch, x0 : x0 + cw] += logits
            count[y : y + ch, x0 : x0 + cw] += 1
    assert total is not None and bool((count > 0).all())
    return total / count


@torch.no_grad()
def tta_probabilities(
    model: nn.Module,
    x: Tensor,
    out_size: tuple[int, int],
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> Tensor:
    """The mean softmax over views: each scale (bilinear resize to round(s * H) x round(s * W)), each
    with its mirror image if ``flip`` (the prediction mirrored back), logits resized bilinearly to
    ``out_size``; whole image, or windows when ``crop`` is given."""
    h, w = x.shape[-2:]

    def logits_of(image: Tensor) -> Tensor:
        if crop is None:
            return model(image).double()
        return window_average(model, image, crop, stride)

    views = []
    for scale in scales:
        size = (round(h * scale), round(w * scale))
        scaled = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        logits = [logits_of(scaled)]
        if flip:
            logits.append(logits_of(torch.flip(scaled, dims=[3])).flip(3))
        for one in logits:
            one = F.interpolate(one, size=out_size, mode="bilinear", align_corners=False)
            views.append(one.softmax(1))
    return torch.stack(views).mean(0)


def top2_gap(probs: Tensor) -> Tensor:
    """Per pixel, how far the most likely class is ahead of the second."""
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def pixelwise_model(num_classes=4, seed=0):
    """A model whose logits at a pixel depend on that pixel only, so any tiling gives the whole result."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, kernel_size=1).eval()
