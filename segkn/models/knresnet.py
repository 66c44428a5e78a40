"""KNResNet-18/34/50 (Nasirigerdeh et al., TMLR 2024): classifier and dense encoder.

KNResNets are pre-activation residual networks made of 2x2 kernel normalized convolutions. Module
names and shapes follow the paper's official ImageNet models, so their checkpoints load through
``segkn.models.weights.load_official_weights``: the keys are the same except that a 1x1 KN
convolution keeps its weight as ``<name>.weight`` where the official code has
``<name>.conv1x1.weight``.

Layout of the dense encoder (the feature after each stage, stride in brackets):
    stage 1 [2]:  block0.0              7x7/2 KNConv
    stage 2 [4]:  block0.1, res_block*  3x3/2 max pool, residual blocks
    stage 3 [8]:  trans_block1, res_block*
    stage 4 [16]: trans_block2, res_block*
    stage 5 [32]: trans_block3, res_block*, conv_block_f (18/34), kn_f, relu_f
Transition max pools use ceil mode, so the feature at stride s is ceil(H/s) x ceil(W/s) for any
input size. The classifier's transition 3 pads (2, 1, 2, 1) and ends with a 2x2 max pool and an
unpadded conv_block_f; the encoder pads both like the other transitions, (1, 0, 1, 0), so that
stage 5 sits at stride 32: same weights, same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from segkn.nn import KN_DROPOUT_P, KernelNorm2d1x1, KNConv2d, KNConv2d1x1


@dataclass(frozen=True)
class Stage:
    """One stage after the stem: transition width (None: no transition), blocks and their width."""

    channels: int | None
    blocks: int
    inter_channels: int


@dataclass(frozen=True)
class KNResNetSpec:
    stem_channels: int
    stages: tuple[Stage, Stage, Stage, Stage]
    bottleneck: bool
    final_channels: int | None  # width of conv_block_f; None: no conv_block_f (KNResNet-50)


SPECS: dict[str, KNResNetSpec] = {
    "knresnet18": KNResNetSpec(
        64, (Stage(None, 2, 256), Stage(256, 2, 256), Stage(512, 1, 512), Stage(724, 1, 724)), False, 512
    ),
    "knresnet34": KNResNetSpec(
        64, (Stage(None, 4, 256), Stage(256, 5, 320), Stage(512, 3, 640), Stage(512, 2, 843)), False, 512
    ),
    "knresnet50": KNResNetSpec(
        256, (Stage(None, 4, 64), Stage(512, 5, 128), Stage(810, 4, 201), Stage(2048, 2, 512)), True, None
    ),
}
TRANSITION_PADDING = {1: (1, 0, 1, 0), 2: (0, 1, 0, 1), 3: (1, 0, 1, 0)}
CLASSIFIER_TRANSITION3_PADDING = (2, 1, 2, 1)


def check_name(name: str) -> KNResNetSpec:
    if name not in SPECS:
        raise ValueError(f"unknown KNResNet {name!r}; valid choices: {', '.join(SPECS)}")
    return SPECS[name]


class MaxPool2x2(nn.Module):
    """2x2 max pool of a transition: stride 2 (ceil mode), or stride 1 with dilation once dilated."""

    def __init__(self) -> None:
        super().__init__()
        self.stride = 2
        self.dilation = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            return F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = F.pad(x, (0, self.dilation, 0, self.dilation), value=float("-inf"))
        return F.max_pool2d(x, 2, 1, dilation=self.dilation)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, dilation={self.dilation}"


class ResidualBlock(nn.Module):
    """Pre-activation residual block of two 2x2 KNConvs (padding 1 then 0: same size out).

    The ReLU between the two convs is fused into conv1 (``relu=True``)."""

    def __init__(self, channels: int, inter_channels: int, dropout_p: float) -> None:
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = KNConv2d(channels, inter_channels, 2, padding=1, dropout_p=dropout_p, relu=True)
        self.conv2 = KNConv2d(inter_channels, channels, 2, padding=0, dropout_p=dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(self.relu1(x)))


class ResidualBottleneck(nn.Module):
    """Pre-activation bottleneck: 2x2 (or 1x1), 3x3, 2x2 (or 1x1) KNConvs.

    The ReLUs after conv1 and conv2 are fused into them (``relu=True``)."""

    def __init__(self, channels: int, inter_channels: int, dropout_p: float, pointwise: bool = False) -> None:
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv2 = KNConv2d(inter_channels, inter_channels, 3, padding=1, dropout_p=dropout_p, relu=True)
        if pointwise:
            self.conv1 = KNConv2d1x1(channels, inter_channels, dropout_p=dropout_p, relu=True)
            self.conv3 = KNConv2d1x1(inter_channels, channels, dropout_p=dropout_p)
        else:
            self.conv1 = KNConv2d(channels, inter_channels, 2, padding=1, dropout_p=dropout_p, relu=True)
            self.conv3 = KNConv2d(inter_channels, channels, 2, padding=0, dropout_p=dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv3(self.conv2(self.conv1(self.relu1(x))))


class TransitionBlock(nn.Module):
    """ReLU, a 2x2 (or 1x1) KNConv that changes the width, and a 2x2 max pool that halves the size."""

    def __init__(
        self, in_channels: int, out_channels: int, padding: tuple[int, ...], dropout_p: float, pointwise: bool
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        if pointwise:
            self.conv = KNConv2d1x1(in_channels, out_channels, dropout_p=dropout_p)
        else:
            self.conv = KNConv2d(in_channels, out_channels, 2, padding=padding, dropout_p=dropout_p)
        self.max_pool = MaxPool2x2()

    def forward(self, x: Tensor) -> Tensor:
        return self.max_pool(self.conv(self.relu(x)))


class ConvBlock(nn.Module):
    """ReLU and a 2x2 KNConv (the classifier's final conv_block_f)."""

    def __init__(
        self, in_channels: int, out_channels: int, padding: tuple[int, ...], dropout_p: float
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv = KNConv2d(in_channels, out_channels, 2, padding=padding, dropout_p=dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.relu(x))


class _KNResNetBody(nn.Module):
    """The blocks shared by the classifier and the encoder, registered under the official names."""

    def __init__(
        self, name: str, in_channels: int, dropout_p: float, num_stages: int, transition3_padding: tuple
    ) -> None:
        super().__init__()
        spec = check_name(name)
        self.arch_name = name
        self.block0 = nn.Sequential(
            KNConv2d(in_channels, spec.stem_channels, 7, stride=2, padding=3, dropout_p=dropout_p),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        # stage_blocks[i]: names of the blocks of stage i + 2 (strides 4, 8, 16, 32)
        self.stage_blocks: list[list[str]] = []
        channels, index = spec.stem_channels, 0
        for stage_no, stage in enumerate(spec.stages[: max(num_stages - 1, 0)]):
            names = []
            if stage.channels is not None:
                padding = transition3_padding if stage_no == 3 else TRANSITION_PADDING[stage_no]
                pointwise = spec.bottleneck and stage_no == 3
                block = TransitionBlock(channels, stage.channels, padding, dropout_p, pointwise)
                self.add_module(f"trans_block{stage_no}", block)
                names.append(f"trans_block{stage_no}")
                channels = stage.channels
            for _ in range(stage.blocks):
                index += 1
                if spec.bottleneck:
                    block = ResidualBottleneck(channels, stage.inter_channels, dropout_p, stage_no == 3)
                else:
                    block = ResidualBlock(channels, stage.inter_channels, dropout_p)
                self.add_module(f"res_block{index}", block)
                names.append(f"res_block{index}")
            self.stage_blocks.append(names)
        self.body_channels = channels

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, KNConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def run_blocks(self, names: list[str], x: Tensor) -> Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x


def _final_kn_dropout(dropout_p: float) -> float:
    return min(5 * dropout_p, 0.25)


class KNResNet(_KNResNetBody):
    """KNResNet ImageNet classifier with the paper's exact layout and parameter count."""

    def __init__(
        self,
        name: str = "knresnet18",
        num_classes: int = 1000,
        dropout_p: float = KN_DROPOUT_P,
        in_channels: int = 3,
    ) -> None:
        super().__init__(name, in_channels, dropout_p, 5, CLASSIFIER_TRANSITION3_PADDING)
        spec = SPECS[name]
        channels = self.body_channels
        if spec.final_channels is not None:
            self.max_pool_f = nn.MaxPool2d(2, stride=2)
            self.conv_block_f = ConvBlock(channels, spec.final_channels, (0, 0, 0, 0), dropout_p)
            channels = spec.final_channels
        self.kn_f = KernelNorm2d1x1(dropout_p=_final_kn_dropout(dropout_p))
        self.relu_f = nn.ReLU()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.init_weights()

    def forward(self, x: Tensor) -> Tensor:
        x = self.block0(x)
        for names in self.stage_blocks:
            x = self.run_blocks(names, x)
        if hasattr(self, "conv_block_f"):
            x = self.conv_block_f(self.max_pool_f(x))
        x = self.avg_pool(self.relu_f(self.kn_f(x)))
        return self.fc(torch.flatten(x, 1))


class KNResNetEncoder(_KNResNetBody, EncoderMixin):
    """KNResNet as a dense encoder (smp's encoder contract): features at strides 1, 2, ..., 2**depth."""

    def __init__(
        self,
        name: str = "knresnet18",
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        dropout_p: float = KN_DROPOUT_P,
    ) -> None:
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder_depth must be in 1..5 for {name}, got {depth}")
        _KNResNetBody.__init__(self, name, in_channels, dropout_p, depth, TRANSITION_PADDING[3])
        EncoderMixin.__init__(self)
        spec = SPECS[name]
        stage_channels = [spec.stem_channels, spec.stem_channels]
        stage_channels += [s.channels for s in spec.stages[1:]]  # type: ignore[misc]
        if depth == 5:
            if spec.final_channels is not None:
                self.conv_block_f = ConvBlock(
                    self.body_channels, spec.final_channels, (1, 0, 1, 0), dropout_p
                )
                self.stage_blocks[3].append("conv_block_f")
                stage_channels[-1] = spec.final_channels
            self.kn_f = KernelNorm2d1x1(dropout_p=_final_kn_dropout(dropout_p))
            self.relu_f = nn.ReLU()
            self.stage_blocks[3] += ["kn_f", "relu_f"]
        self._depth = depth
        self._stage_ends = [names[-1] for names in self.stage_blocks]  # each gives a feature
        self._in_channels = in_channels
        self._out_channels = [in_channels, *stage_channels]
        self._output_stride = 32
        self.init_weights()
        self.make_dilated(output_stride)

    def get_stages(self) -> dict[int, list[nn.Module]]:
        return {2 ** (i + 2): [getattr(self, n) for n in names] for i, names in enumerate(self.stage_blocks)}

    def make_dilated(self, output_stride: int) -> None:
        """Trade the last down-samplings for dilation: output stride 8, 16 or 32 (undo). Idempotent."""
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        dilation = 1
        for i, names in enumerate(self.stage_blocks):
            stride = 2 ** (i + 2)
            for name in names:
                block = getattr(self, name)
                pool = getattr(block, "max_pool", None)
                if isinstance(pool, MaxPool2x2):
                    _set_dilation(block.conv, dilation)
                    pool.dilation = dilation
                    pool.stride = 1 if stride > output_stride else 2
                    if stride > output_stride:
                        dilation *= 2
                else:
                    for m in block.modules():
                        if isinstance(m, KNConv2d):
                            _set_dilation(m, dilation)
        self._output_stride = output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [x]
        x = self.block0[0](x)
        features.append(x)
        if self._depth > 1:
            x = self.block0[1](x)
        # The blocks run in the order they were added (as in nn.Sequential; TorchScript unrolls the
        # loop); the last block of each stage gives that stage's feature.
        for name, block in self.named_children():
            if name != "block0":
                x = block(x)
                if name in self._stage_ends:
                    features.append(x)
        return features

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, **kwargs):  # type: ignore[override]
        # smp passes the classifier's fc along with the backbone; the encoder has no classifier
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        return super().load_state_dict(state_dict, strict=strict, **kwargs)


def _set_dilation(conv: nn.Module, dilation: int) -> None:
    """Dilate a KN conv in place, scaling its padding so that its output size is unchanged."""
    if not isinstance(conv, KNConv2d) or conv.kernel_size == (1, 1):
        return
    old = conv.dilation[0]
    conv.pad4 = tuple(p // old * dilation for p in conv.pad4)
    conv.dilation = (dilation, dilation)


def register_smp_encoders() -> None:
    """Make ``knresnet18|34|50`` usable as ``encoder_name`` in every smp architecture."""
    from segmentation_models_pytorch.encoders import encoders

    for name in SPECS:
        encoders.setdefault(
            name, {"encoder": KNResNetEncoder, "pretrained_settings": {}, "params": {"name": name}}
        )
