"""Typed run configuration: a YAML file merged over defaults, then dotted CLI overrides, validated."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segkn.atomic import atomic_open
from segkn.config_fields import ConfigError, build, limited
from segkn.data.registry import DATASETS
from segkn.data.shapes import DEFAULT_LENGTH, DEFAULT_NUM_CLASSES, DEFAULT_SIZE, MIN_SIZE, SHAPE_KINDS
from segkn.models.factory import ARCHS, DEFAULTS, ENCODERS, resolve_model_config
from segkn.nn.blocks import NORMS

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PrivacyConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "resolve",
    "save_config",
]


# The words come from their registries: models (architectures, encoders), nn (norms), data (datasets).
Arch = Literal[ARCHS]  # type: ignore[valid-type]
Encoder = Literal[ENCODERS]  # type: ignore[valid-type]
Norm = Literal[NORMS]  # type: ignore[valid-type]
DatasetType = Literal[tuple(DATASETS)]  # type: ignore[misc]
AmpMode = Literal["bf16", "fp16", "off"]
Toggle = Literal["auto", True, False]  # a speed-up: "auto" lets segkn choose by device

# Keys that older recipes and checkpoints carry: accepted with the only value they ever took, then dropped.
_RETIRED = {"train.lr_schedule": "poly", "train.aux_loss": 0.0}


class _Section:
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the fields (lists, numbers, strings, None)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class ModelConfig(_Section):
    """The network; `to_dict()` is the mapping that `segkn.models.build_model` takes, and the models'
    `resolve_model_config` checks its rules (e.g. knresnet needs norm kn) and fills the null fields."""

    arch: Arch = DEFAULTS["arch"]
    encoder: Encoder = DEFAULTS["encoder"]
    encoder_depth: int = limited(DEFAULTS["encoder_depth"], min=1, max=5)
    norm: Norm = DEFAULTS["norm"]
    decoder_norm: Norm | None = None  # null: same as norm (resolved)
    num_classes: int | None = limited(None, min=1)  # null: taken from the dataset by the trainer
    # null: the architecture's output stride, 16 for deeplabv3/deeplabv3plus, 32 for unet (resolved)
    output_stride: Literal[8, 16, 32] | None = None
    dropout_p: float = limited(DEFAULTS["dropout_p"], min=0.0, lt=1.0)  # KN statistics dropout, training only
    decoder_dropout: float = limited(DEFAULTS["decoder_dropout"], min=0.0, lt=1.0)
    encoder_weights: str | None = None  # file with encoder weights, e.g. official knresnet18_imagenet.pth
    in_channels: int = limited(DEFAULTS["in_channels"], min=1)
    # null: 256 for deeplabv3/deeplabv3plus, [256, 128, 64, 32, 16][:encoder_depth] for unet (resolved)
    decoder_channels: int | list[int] | None = limited(None, min=1)


@dataclass
class DataConfig(_Section):
    """Dataset, augmentation and loading."""

    type: DatasetType = "shapes"
    root: str | None = None  # dataset folder; required except for the generated `shapes` data
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = limited([512, 512], len=2, min=1)  # [h, w]; one number means a square
    scale_range: list[float] = limited([0.5, 2.0], len=2, gt=0.0)  # random rescale factors [min, max]
    cat_max_ratio: float = limited(1.0, gt=0.0, max=1.0)  # max share of one class in a crop; 1.0 = off
    hflip: bool = True
    photometric: bool = True
    normalize: Literal["none", "imagenet"] | None = None  # null: "none" for norm kn, else "imagenet"
    eval_resize: list[int] | None = limited(None, len=2, min=1)  # eval images resized to [h, w]; null: as is
    # true: eval_resize [a, b] bounds the long side by max(a, b) and the short one by min(a, b), the
    # aspect ratio kept (ADE20K: [2048, 512], as mmsegmentation evaluates)
    eval_keep_ratio: bool = False
    num_workers: int = limited(2, min=0)
    shapes_size: list[int] = limited(list(DEFAULT_SIZE), len=2, min=MIN_SIZE)  # [h, w] of generated images
    shapes_train_length: int = limited(DEFAULT_LENGTH["train"], min=1)
    shapes_val_length: int = limited(DEFAULT_LENGTH["val"], min=1)
    shapes_num_classes: int = limited(DEFAULT_NUM_CLASSES, min=2, max=len(SHAPE_KINDS) + 1)  # + background
    classes_file: str | None = None  # folder datasets: YAML with classes (+ palette); null: root/classes.yaml


@dataclass
class TrainConfig(_Section):
    """Optimization; counts are in iterations (optimizer steps), batch sizes per process."""

    iterations: int = limited(80000, min=1)
    batch_size: int = limited(2, min=1)
    accumulate: int = limited(1, min=1)  # micro-batches per optimizer step
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = limited(0.01, gt=0.0)
    momentum: float = limited(0.9, min=0.0, max=1.0)  # SGD momentum; ignored by adamw
    weight_decay: float = limited(5e-4, min=0.0)  # not applied to biases and norm parameters
    poly_power: float = limited(0.9, min=0.0)
    warmup_iters: int = limited(0, min=0)
    warmup_ratio: float = limited(1e-6, gt=0.0, max=1.0)  # lr factor at the first warmup iteration
    min_lr: float = limited(1e-4, min=0.0)  # absolute lr reached at the end of the poly decay (mmseg)
    amp: AmpMode | None = None  # null: bf16 on CUDA when supported, off on CPU
    dice_weight: float = limited(0.0, min=0.0)
    lovasz_weight: float = limited(0.0, min=0.0)
    val_interval: int = limited(8000, min=1)
    log_interval: int = limited(50, min=1)
    checkpoint_interval: int = limited(8000, min=1)
    grad_clip: float | None = limited(None, gt=0.0)  # max gradient norm; null: no clipping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch.compile the model for training; auto: on CUDA, off on CPU (compiling takes minutes there)
    compile: Toggle = "auto"
    channels_last: bool = False  # the model and its inputs in torch.channels_last memory format


@dataclass
class EvalConfig(_Section):
    """Inference used for validation and `segkn eval`."""

    mode: Literal["whole", "slide"] = "whole"
    crop_size: list[int] | None = limited(None, len=2, min=1)  # slide window [h, w]; null: data.crop_size
    stride: list[int] | None = limited(None, len=2, min=1)  # slide step [h, w]; null: 2/3 of crop_size
    scales: list[float] = limited([1.0], gt=0.0)
    flip: bool = False
    batch_size: int = limited(1, min=1)
    # torch.compile for evaluation and validation during training; auto: on CUDA, off on CPU
    compile: Toggle = "auto"
    # `segkn eval` (and the Segmenter's default): model and inputs in channels_last memory format;
    # validation during training follows train.channels_last, the training model's format
    channels_last: bool = False
    # validation during training: this many val images drawn as image | truth | prediction panels into
    # TensorBoard and run_dir/vis/<step>/ (the same images every time); 0: none
    vis_samples: int = limited(4, min=0)


@dataclass
class PrivacyConfig(_Section):
    """Differentially private training (DP-SGD): per-sample clipping, Gaussian noise, accounting; see
    docs/privacy.md. Exactly one of noise_multiplier and target_epsilon is set when enabled."""

    enabled: bool = False
    noise_multiplier: float | None = limited(None, gt=0.0)  # noise std / max_grad_norm
    # null, or the epsilon to reach at train.iterations: the noise multiplier is computed for it
    target_epsilon: float | None = limited(None, gt=0.0)
    delta: float = limited(1e-5, gt=0.0, lt=1.0)
    max_grad_norm: float = limited(1.0, gt=0.0)  # each sample's gradient is clipped to this L2 norm
    accountant: Literal["rdp", "prv"] = "rdp"
    poisson_sampling: bool = True  # each sample joins a step with probability batch / dataset size
    max_epsilon: float | None = limited(None, gt=0.0)  # stop before the spent epsilon would exceed it


@dataclass
class Config(_Section):
    """A whole run; the run directory is `run_dir/name`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    run_dir: str = "runs"
    name: str | None = None  # null: the config file's stem, else arch_encoder_norm_dataset (resolved)
    seed: int = 0

    @property
    def run_path(self) -> Path:
        """Directory of this run's outputs."""
        return Path(self.run_dir) / (self.name or "run")


# ----------------------------------------------------------------------------------------------------------
# Overrides, resolution, consistency


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.sub=value` into the dotted key and the value parsed as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"override '{text}': missing '=' (write key=value, e.g. train.lr=0.02)")
    if not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected a dotted key before '=', e.g. train.lr=0.02")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"override '{text}': cannot read the value {raw!r} as YAML: {problem}") from None
    return key, value


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of `cfg` with dotted `key=value` overrides applied in order (a mapping set on a section
    sets its keys), each checked like a key of the file."""
    for text in overrides:
        key, value = parse_override(text)
        tree = node = cfg.to_dict()
        *sections, leaf = key.split(".")
        for i, part in enumerate(sections):
            node = node.setdefault(part, {})  # an unknown section is named by build
            if not isinstance(node, dict):
                dotted = ".".join(sections[: i + 1])
                raise ConfigError(
                    f"override '{text}': '{dotted}' is a value, not a section, so '{key}' does not exist"
                )
        if isinstance(node.get(leaf), dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"override '{text}': '{key}' is a section: set its keys: {key}.<key>=...")
            node[leaf].update(value)
        else:
            node[leaf] = value
        cfg = build(Config, tree, f"override '{text}'", _RETIRED)
    return cfg


def resolve(cfg: Config, source: str = "<config>") -> Config:
    """A copy of `cfg` with the null 'auto' fields that depend on other fields filled in; the model's come
    from `segkn.models.resolve_model_config`, whose rule errors name `source`."""
    cfg = copy.deepcopy(cfg)
    model, data, ev = cfg.model, cfg.data, cfg.eval
    try:  # num_classes may still be null here: the trainer takes it from the dataset
        full = resolve_model_config({**model.to_dict(), "num_classes": model.num_classes or 1})
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    model.decoder_norm, model.output_stride = full["decoder_norm"], full["output_stride"]
    channels = full["decoder_channels"]
    model.decoder_channels = list(channels) if isinstance(channels, (list, tuple)) else channels
    if data.normalize is None:
        # official KNResNet weights take raw [0, 1] inputs; torchvision ResNets take ImageNet mean/std
        data.normalize = "none" if model.norm == "kn" else "imagenet"
    if ev.mode == "slide":
        if ev.crop_size is None:
            ev.crop_size = list(data.crop_size)
        if ev.stride is None:
            ev.stride = [max(1, math.ceil(2 * c / 3)) for c in ev.crop_size]
    if cfg.name is None:
        cfg.name = f"{model.arch}_{model.encoder}_{model.norm}_{data.type}"
    return cfg


def _check_consistency(cfg: Config, source: str) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    data, train, ev = cfg.data, cfg.train, cfg.eval
    if data.type != "shapes" and not data.root:
        fail("data.root", f"required for data.type '{data.type}' (set it to the dataset folder)")
    if data.scale_range[0] > data.scale_range[1]:
        fail("data.scale_range", f"expected [min, max] with min <= max, got {data.scale_range}")
    if train.warmup_iters > train.iterations:
        fail("train.warmup_iters", f"{train.warmup_iters} is more than train.iterations ({train.iterations})")
    if train.min_lr > train.lr:
        fail("train.min_lr", f"{train.min_lr} is above train.lr ({train.lr}); min_lr is an absolute lr")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", train.device):
        fail("train.device", f"expected auto, cpu, cuda or cuda:N, got {train.device!r}")
    if data.eval_keep_ratio and data.eval_resize is None:
        fail(
            "data.eval_keep_ratio", "needs data.eval_resize, the [long, short] size to fit, e.g. [2048, 512]"
        )
    if ev.crop_size is not None and ev.stride is not None:
        if any(s > c for s, c in zip(ev.stride, ev.crop_size, strict=True)):
            fail("eval.stride", f"{ev.stride} exceeds eval.crop_size {ev.crop_size}: windows skip pixels")
    if cfg.privacy.enabled:
        _check_privacy(cfg, fail)


def _check_privacy(cfg: Config, fail: Callable[[str, str], None]) -> None:
    p, t = cfg.privacy, cfg.train
    if (p.noise_multiplier is None) == (p.target_epsilon is None):
        both = "both are set" if p.noise_multiplier is not None else "neither is set"
        fail("privacy.noise_multiplier", f"set exactly one of it and privacy.target_epsilon ({both})")
    if p.target_epsilon is not None and p.max_epsilon is not None and p.max_epsilon < p.target_epsilon:
        fail("privacy.max_epsilon", f"{p.max_epsilon} is below privacy.target_epsilon ({p.target_epsilon})")
    if t.grad_clip is not None:
        fail(
            "train.grad_clip", "must be null with privacy: privacy.max_grad_norm clips each sample's gradient"
        )
    if t.amp == "fp16":
        fail("train.amp", "fp16 (loss scaling) is not supported with privacy: use bf16 or off")
    if t.lovasz_weight > 0:
        fail(
            "train.lovasz_weight",
            "must be 0 with privacy: the Lovasz term sorts each class's errors with data-dependent steps "
            "that per-sample gradients cannot trace (train.dice_weight works)",
        )


# ----------------------------------------------------------------------------------------------------------
# Loading and saving


def config_from_dict(d: Mapping[str, Any], source: str = "<config>") -> Config:
    """A validated, resolved Config from a plain nested mapping (e.g. the one stored in a checkpoint)."""
    cfg = resolve(build(Config, d, source, _RETIRED), source)
    _check_consistency(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML recipe over the defaults, apply `key.sub=value` overrides, validate and resolve."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read as YAML: {err}") from None
    cfg = apply_overrides(build(Config, data, str(path), _RETIRED), overrides)
    if cfg.name is None:
        cfg.name = path.stem
    source = f"{path} (with overrides)" if overrides else str(path)
    cfg = resolve(cfg, source)
    _check_consistency(cfg, source)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as YAML atomically (temp file in the same folder, then rename)."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    with atomic_open(path) as f:
        f.write(text)
