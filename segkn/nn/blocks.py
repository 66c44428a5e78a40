"""Norm words and the conv + norm (+ activation) factory shared by encoders and decoders.

Every part of a segkn model takes a ``norm`` word: ``kn`` (kernel normalized convolution: the
norm is part of the conv, batch-independent), ``bn`` (BatchNorm), ``gn`` (GroupNorm, 32 groups),
``ln`` (layer norm over C x H x W, i.e. GroupNorm with one group) or ``none``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from segkn.nn.kernel_norm import KN_DROPOUT_P
from segkn.nn.knconv import KNConv2d, KNConv2d1x1

NORMS = ("kn", "bn", "gn", "ln", "none")
BATCH_DEPENDENT_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def check_norm(norm: str, key: str = "norm") -> str:
    """Return ``norm`` if it is a known norm word, else raise a clear error."""
    if norm not in NORMS:
        raise ValueError(f"unknown {key} {norm!r}; valid choices: {', '.join(NORMS)}")
    return norm


def make_norm(norm: str, channels: int) -> nn.Module:
    """A normalization layer over ``channels`` feature maps (not for ``kn``: KN lives in the conv)."""
    check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError("norm 'kn' is part of the convolution: use conv_norm() / KNConv2d")


def conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int = 1,
    groups: int = 1,
    norm: str = "kn",
    dropout_p: float = KN_DROPOUT_P,
    relu: bool = False,
) -> nn.Module:
    """A convolution and its normalization: one KNConv2d for ``kn``, else Conv2d + norm layer.

    ``relu=True`` adds a ReLU: fused into the KN conv, or a separate in-place ReLU after the norm.
    """
    check_norm(norm)
    if norm == "kn":
        if kernel_size == 1 and padding == 0:
            return KNConv2d1x1(
                in_channels, out_channels, stride=stride, groups=groups, dropout_p=dropout_p, relu=relu
            )
        return KNConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            dropout_p=dropout_p,
            relu=relu,
        )
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=norm == "none"
    )
    layers = [conv, make_norm(norm, out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ConvNormAct(nn.Module):
    """conv_norm() followed by ReLU: the building block of segkn's decoders and heads.

    For ``kn`` the ReLU is fused into the KN conv (``act`` is then an identity)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        norm: str = "kn",
        dropout_p: float = KN_DROPOUT_P,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        fused = norm == "kn"
        self.conv = conv_norm(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            norm=norm,
            dropout_p=dropout_p,
            relu=fused,
        )
        self.act = nn.Identity() if fused else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


def batch_dependent_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose output depends on other samples of the batch (BatchNorm kinds)."""
    return [name for name, m in model.named_modules() if isinstance(m, BATCH_DEPENDENT_LAYERS)]
