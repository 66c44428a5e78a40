"""Standard-layout ResNet-18/34/50 encoders with a norm word: the baselines KNResNets are compared with.

``bn | gn | ln | none`` build torchvision's ResNet with that norm layer; for ``bn`` the state_dict
keys are exactly torchvision's (minus ``fc``), so its ImageNet weights load. ``kn`` turns every
conv + norm pair into one ``KNConv2d`` of the same kernel, stride and padding (with a bias) and the
norm into ``nn.Identity``: the same convolution FLOPs as the ``bn`` network, normalized inside the
convolutions and batch-independent. Its blocks fuse the ReLU after each inner conv into the KN conv
and add the shortcut out of place (same function as torchvision's blocks, less memory).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from segkn.nn import KN_DROPOUT_P
from segkn.nn.blocks import check_norm, make_norm
from segkn.nn.knconv import KNConv2d, KNConv2d1x1


class KNBasicBlock(BasicBlock):
    """torchvision's BasicBlock (same modules and keys) for KN convs: conv1 carries the ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu_(self.bn2(self.conv2(self.bn1(self.conv1(x)))) + identity)


class KNBottleneck(Bottleneck):
    """torchvision's Bottleneck (same modules and keys) for KN convs: conv1, conv2 carry the ReLUs."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return torch.relu_(self.bn3(self.conv3(out)) + identity)


KN_BLOCKS: dict[type, type] = {BasicBlock: KNBasicBlock, Bottleneck: KNBottleneck}

RESNET_SPECS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetEncoder(ResNet, EncoderMixin):
    """torchvision ResNet as an smp encoder: ``forward(x)`` -> features at strides 1, 2, 4, ... 2**depth.

    ``output_stride`` 8 or 16 replaces the strides of layer4 (and layer3) with dilation, keeping the
    weights and state_dict keys. ``dropout_p`` is the KN statistics dropout (``norm="kn"`` only).
    ``norm="none"`` gives every conv a bias, as ``segkn.nn.blocks.conv_norm`` does.
    """

    def __init__(
        self,
        name: str = "resnet18",
        norm: str = "bn",
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        dropout_p: float = KN_DROPOUT_P,
    ) -> None:
        if name not in RESNET_SPECS:
            raise ValueError(f"unknown resnet {name!r}; valid choices: {', '.join(RESNET_SPECS)}")
        check_norm(norm)
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder depth must be in 1..5, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block, layers = RESNET_SPECS[name]
        if norm == "kn":
            block = KN_BLOCKS[block]
        # nn.Identity ignores its arguments, so it stands in for norm_layer(channels).
        norm_layer = nn.Identity if norm in ("kn", "none") else partial(make_norm, norm)
        super().__init__(block, layers, norm_layer=norm_layer)
        del self.fc
        del self.avgpool

        width = 64 * block.expansion
        self._out_channels = [in_channels, 64, width, 2 * width, 4 * width, 8 * width]
        self._in_channels = in_channels
        self._depth = depth
        self._output_stride = output_stride

        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if norm == "kn":
            replace_convs(self, partial(to_knconv, dropout_p=dropout_p))
            _fuse_relus(self)
        elif norm == "none":
            replace_convs(self, with_bias)
        if output_stride != 32:
            self.make_dilated(output_stride)
        # Layers past ``depth`` keep torchvision's keys (its weights load) but never run; without
        # gradients, DistributedDataParallel does not wait for theirs.
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[max(depth - 1, 0) :]:
            layer.requires_grad_(False)

    def get_stages(self) -> dict[int, list[nn.Module]]:
        """The modules that make each of the two last down-samplings (for smp's ``make_dilated``)."""
        return {16: [self.layer3], 32: [self.layer4]}

    def make_dilated(self, output_stride: int) -> None:
        """Replace the strides past ``output_stride`` (8 or 16) with dilation, and record it."""
        super().make_dilated(output_stride)
        self._output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        x = self.maxpool(x)
        # one test per stage (as in smp's encoders), which TorchScript compiles
        if self._depth >= 2:
            x = self.layer1(x)
            features.append(x)
        if self._depth >= 3:
            x = self.layer2(x)
            features.append(x)
        if self._depth >= 4:
            x = self.layer3(x)
            features.append(x)
        if self._depth >= 5:
            x = self.layer4(x)
            features.append(x)
        return features

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """Load weights; a torchvision classifier's ``fc.*`` entries are ignored."""
        kept = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith("fc."))
        metadata = getattr(state_dict, "_metadata", None)
        if metadata is not None:
            kept._metadata = metadata  # type: ignore[attr-defined]
        return super().load_state_dict(kept, *args, **kwargs)


def replace_convs(module: nn.Module, build: Callable[[nn.Conv2d], nn.Conv2d]) -> None:
    """Replace every ``nn.Conv2d`` below ``module`` (in place) with ``build(conv)``."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, child_name, build(child))
        else:
            replace_convs(child, build)


def to_knconv(conv: nn.Conv2d, dropout_p: float = KN_DROPOUT_P) -> KNConv2d:
    """A KNConv2d with the shape, stride, padding, dilation and weights of ``conv``, and a zero bias."""
    assert isinstance(conv.padding, tuple), "string padding has no KN equivalent"
    if conv.kernel_size == (1, 1) and conv.padding == (0, 0):
        kn: KNConv2d = KNConv2d1x1(
            conv.in_channels, conv.out_channels, conv.stride, conv.groups, bias=True, dropout_p=dropout_p
        )
    else:
        kn = KNConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            dropout_p=dropout_p,
        )
    return _copy_weight(conv, kn)


def _fuse_relus(encoder: ResNetEncoder) -> None:
    """Move the ReLUs that follow KN convs into them (the KN blocks' forwards leave them out)."""
    encoder.conv1.relu = True
    encoder.relu = nn.Identity()
    for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        for block in layer:
            block.conv1.relu = True
            if isinstance(block, Bottleneck):
                block.conv2.relu = True


def with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with a (zero) bias added, when it has none."""
    if conv.bias is not None:
        return conv
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    )
    return _copy_weight(conv, new)


def _copy_weight(src: nn.Conv2d, dst: nn.Conv2d) -> nn.Conv2d:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if dst.bias is not None:
            dst.bias.zero_()
    return dst
