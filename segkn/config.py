"""Typed run configuration: a YAML file merged over defaults, then dotted CLI overrides, validated."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from segkn.atomic import atomic_open
from segkn.data.shapes import DEFAULT_LENGTH, DEFAULT_NUM_CLASSES, DEFAULT_SIZE, MIN_SIZE, SHAPE_KINDS

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "resolve",
    "save_config",
]


class ConfigError(ValueError):
    """A config file, mapping or override that cannot be used; the message names the source and key."""


Arch = Literal["deeplabv3", "deeplabv3plus", "unet"]
Encoder = Literal["knresnet18", "knresnet34", "knresnet50", "resnet18", "resnet34", "resnet50"]
Norm = Literal["kn", "bn", "gn", "ln", "none"]
DatasetType = Literal["cityscapes", "voc", "folder", "shapes"]
AmpMode = Literal["bf16", "fp16", "off"]
Toggle = Literal["auto", True, False]  # a speed-up: "auto" lets segkn choose by device

DEEPLAB_DECODER_CHANNELS = 256
UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def _field(default: Any, **limits: Any) -> Any:
    """A dataclass field with validation limits: min, max (inclusive), gt, lt (exclusive), len (of a list)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=limits)
    return field(default=default, metadata=limits)


class _Section:
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the fields (lists, numbers, strings, None)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class ModelConfig(_Section):
    """The network; `to_dict()` is the mapping that `segkn.models.build_model` takes."""

    arch: Arch = "deeplabv3plus"
    encoder: Encoder = "knresnet18"
    encoder_depth: int = _field(5, min=1, max=5)  # deeplabv3plus needs >= 3
    norm: Norm = "kn"
    decoder_norm: Norm | None = None  # null: same as norm (resolved)
    num_classes: int | None = _field(None, min=1)  # null: taken from the dataset by the trainer
    output_stride: Literal[8, 16, 32] = 16
    dropout_p: float = _field(0.05, min=0.0, lt=1.0)  # KernelNorm statistics dropout, training only
    decoder_dropout: float = _field(0.1, min=0.0, lt=1.0)
    encoder_weights: str | None = None  # file with encoder weights, e.g. official knresnet18_imagenet.pth
    in_channels: int = _field(3, min=1)
    # null: 256 for deeplabv3/deeplabv3plus, [256, 128, 64, 32, 16][:encoder_depth] for unet (resolved)
    decoder_channels: int | list[int] | None = _field(None, min=1)


@dataclass
class DataConfig(_Section):
    """Dataset, augmentation and loading."""

    type: DatasetType = "shapes"
    root: str | None = None  # dataset folder; required except for the generated `shapes` data
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = _field([512, 512], len=2, min=1)  # [h, w]; one number means a square
    scale_range: list[float] = _field([0.5, 2.0], len=2, gt=0.0)  # random rescale factors [min, max]
    cat_max_ratio: float = _field(1.0, gt=0.0, max=1.0)  # max share of one class in a crop; 1.0 = off
    hflip: bool = True
    photometric: bool = True
    normalize: Literal["none", "imagenet"] | None = None  # null: "none" for norm kn, else "imagenet"
    eval_resize: list[int] | None = _field(None, len=2, min=1)  # eval images resized to [h, w]; null: as is
    num_workers: int = _field(2, min=0)
    shapes_size: list[int] = _field(list(DEFAULT_SIZE), len=2, min=MIN_SIZE)  # [h, w] of generated images
    shapes_train_length: int = _field(DEFAULT_LENGTH["train"], min=1)
    shapes_val_length: int = _field(DEFAULT_LENGTH["val"], min=1)
    shapes_num_classes: int = _field(DEFAULT_NUM_CLASSES, min=2, max=len(SHAPE_KINDS) + 1)  # + background
    classes_file: str | None = None  # folder datasets: YAML with classes (+ palette); null: root/classes.yaml


@dataclass
class TrainConfig(_Section):
    """Optimization; counts are in iterations (optimizer steps), batch sizes per process."""

    iterations: int = _field(80000, min=1)
    batch_size: int = _field(2, min=1)
    accumulate: int = _field(1, min=1)  # micro-batches per optimizer step
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = _field(0.01, gt=0.0)
    momentum: float = _field(0.9, min=0.0, max=1.0)  # SGD momentum; ignored by adamw
    weight_decay: float = _field(5e-4, min=0.0)  # not applied to biases and norm parameters
    lr_schedule: Literal["poly"] = "poly"
    poly_power: float = _field(0.9, min=0.0)
    warmup_iters: int = _field(0, min=0)
    warmup_ratio: float = _field(1e-6, gt=0.0, max=1.0)  # lr factor at the first warmup iteration
    min_lr: float = _field(1e-4, min=0.0)  # absolute lr reached at the end of the poly decay (mmseg)
    amp: AmpMode | None = None  # null: bf16 on CUDA when supported, off on CPU
    aux_loss: float = _field(0.0, min=0.0)  # weight of an auxiliary-head loss; 0 = no auxiliary head
    dice_weight: float = _field(0.0, min=0.0)
    lovasz_weight: float = _field(0.0, min=0.0)
    val_interval: int = _field(8000, min=1)
    log_interval: int = _field(50, min=1)
    checkpoint_interval: int = _field(8000, min=1)
    grad_clip: float | None = _field(None, gt=0.0)  # max gradient norm; null: no clipping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch.compile the model for training; auto: on CUDA, off on CPU (compiling takes minutes there)
    compile: Toggle = "auto"
    channels_last: bool = False  # the model and its inputs in torch.channels_last memory format


@dataclass
class EvalConfig(_Section):
    """Inference used for validation and `segkn eval`."""

    mode: Literal["whole", "slide"] = "whole"
    crop_size: list[int] | None = _field(None, len=2, min=1)  # slide window [h, w]; null: data.crop_size
    stride: list[int] | None = _field(None, len=2, min=1)  # slide step [h, w]; null: 2/3 of crop_size
    scales: list[float] = _field([1.0], gt=0.0)
    flip: bool = False
    batch_size: int = _field(1, min=1)
    # torch.compile for evaluation and validation during training; auto: on CUDA, off on CPU
    compile: Toggle = "auto"
    # `segkn eval` (and the Segmenter's default): model and inputs in channels_last memory format;
    # validation during training follows train.channels_last, the training model's format
    channels_last: bool = False


@dataclass
class Config(_Section):
    """A whole run; the run directory is `run_dir/name`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str = "runs"
    name: str | None = None  # null: the config file's stem, else arch_encoder_norm_dataset (resolved)
    seed: int = 0

    @property
    def run_path(self) -> Path:
        """Directory of this run's outputs."""
        return Path(self.run_dir) / (self.name or "run")


# ----------------------------------------------------------------------------------------------------------
# Value checking


class _Invalid(Exception):
    """A value that does not fit its field; `type_ok` when the kind was right but a limit failed."""

    def __init__(self, key: str, message: str, type_ok: bool = False) -> None:
        super().__init__(message)
        self.key, self.message, self.type_ok = key, message, type_ok


_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
_SINGULAR = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _choice(value: Any) -> str:
    """A Literal choice as a user writes it in YAML (true, not True)."""
    return _show(value) if isinstance(value, bool) else str(value)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if m is type(None) else _describe(m) for m in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(_choice(c) for c in get_args(tp))
    if origin is list:
        return "a list of " + _PLURAL[get_args(tp)[0]]
    return _SINGULAR[tp]


def _check_limits(value: float, key: str, limits: Mapping[str, Any]) -> None:
    if "min" in limits and value < limits["min"]:
        raise _Invalid(key, f"must be >= {limits['min']}, got {_show(value)}", type_ok=True)
    if "max" in limits and value > limits["max"]:
        raise _Invalid(key, f"must be <= {limits['max']}, got {_show(value)}", type_ok=True)
    if "gt" in limits and value <= limits["gt"]:
        raise _Invalid(key, f"must be > {limits['gt']}, got {_show(value)}", type_ok=True)
    if "lt" in limits and value >= limits["lt"]:
        raise _Invalid(key, f"must be < {limits['lt']}, got {_show(value)}", type_ok=True)


def _coerce(value: Any, tp: Any, key: str, limits: Mapping[str, Any]) -> Any:
    """Return `value` checked against type `tp` and `limits`, or raise _Invalid."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [m for m in get_args(tp) if m is not type(None)]
        if value is None and len(members) < len(get_args(tp)):
            return None
        errors = []
        for member in members:
            try:
                return _coerce(value, member, key, limits)
            except _Invalid as err:
                errors.append(err)
        specific = [e for e in errors if e.type_ok]
        if specific:
            raise specific[0]
        raise _Invalid(key, f"expected {_describe(tp)}, got {_show(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            return "on" if value else "off"  # YAML 1.1 reads the bare words on/off as booleans
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        words = isinstance(value, str) and all(isinstance(c, str) for c in choices)
        listed = ", ".join(_choice(c) for c in choices)
        raise _Invalid(key, f"expected one of {listed}, got {_show(value)}{hint}", type_ok=words)
    if origin is list:
        length = limits.get("len")
        if length and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * length
        if not isinstance(value, (list, tuple)):
            raise _Invalid(key, f"expected {_describe(tp)}, got {_show(value)}")
        if length is not None and len(value) != length:
            raise _Invalid(key, f"expected {length} values, got {len(value)}: {_show(value)}", type_ok=True)
        if not value:
            raise _Invalid(key, "expected at least one value, got an empty list", type_ok=True)
        return [_coerce(v, get_args(tp)[0], f"{key}[{i}]", limits) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"expected true or false, got {_show(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            quote = f" (quote it: '{value}')" if isinstance(value, (int, float, bool)) else ""
            raise _Invalid(key, f"expected a string, got {_show(value)}{quote}")
        return value
    if tp in (int, float):
        number = value
        if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
            number = float(value)  # PyYAML reads 1e-4 (no dot) as a string
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise _Invalid(key, f"expected {_SINGULAR[tp]}, got {_show(value)}")
        if tp is int:
            if isinstance(number, float) and not number.is_integer():
                raise _Invalid(key, f"expected an integer, got {_show(value)}")
            number = int(number)
        else:
            number = float(number)
        _check_limits(number, key, limits)
        return number
    raise AssertionError(f"unsupported config field type {tp!r} for {key}")


def _field_types(cls: type) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata) for f in dataclasses.fields(cls)}


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, (tp, _) in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _dotted_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(key: str, section: str, valid: Sequence[str], source: str) -> ConfigError:
    prefix = f"{section}." if section else ""
    in_section = [prefix + name for name in valid]
    leaf = key.rsplit(".", 1)[-1]
    all_keys = _dotted_keys(Config)
    guess = (
        [k for k in all_keys if k.rsplit(".", 1)[-1] == leaf][:1]  # right name, wrong section
        or difflib.get_close_matches(key, in_section, n=1)
        or difflib.get_close_matches(key, all_keys, n=1)
    )
    where = f"valid keys in '{section}'" if section else "valid top-level keys"
    hint = f"did you mean '{guess[0]}'? " if guess else ""
    return ConfigError(f"{source}: unknown key '{key}' ({hint}{where}: {', '.join(valid)})")


def _build(cls: type, mapping: Any, section: str, source: str) -> Any:
    """Instantiate dataclass `cls` from `mapping` over its defaults, checking every key and value."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        where = f"'{section}'" if section else "the top level"
        raise ConfigError(f"{source}: expected a mapping of keys at {where}, got {_show(mapping)}")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in mapping.items():
        key = f"{section}.{name}" if section else str(name)
        if name not in types_:
            raise _unknown_key(key, section, list(types_), source)
        tp, limits = types_[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)
        else:
            kwargs[name] = _checked(value, tp, key, limits, source)
    return cls(**kwargs)


def _checked(value: Any, tp: Any, key: str, limits: Mapping[str, Any], source: str) -> Any:
    try:
        return _coerce(value, tp, key, limits)
    except _Invalid as err:
        raise ConfigError(f"{source}: {err.key}: {err.message}") from None


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


def _set_dotted(cfg: Config, key: str, value: Any, source: str) -> None:
    obj: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        section = ".".join(parts[:i])
        types_ = _field_types(type(obj))
        if part not in types_:
            raise _unknown_key(".".join(parts[: i + 1]), section, list(types_), source)
        tp, limits = types_[part]
        dotted = ".".join(parts[: i + 1])
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}: '{dotted}' is a section: set its keys: {dotted}.<key>=...")
                for name, sub in value.items():
                    _set_dotted(cfg, f"{dotted}.{name}", sub, source)
            else:
                setattr(obj, part, _checked(value, tp, dotted, limits, source))
        elif not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{source}: '{dotted}' is a value, not a section, so '{key}' does not exist")
        else:
            obj = getattr(obj, part)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of `cfg` with dotted `key=value` overrides applied in order."""
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(cfg, key, value, f"override '{text}'")
    return cfg


def resolve(cfg: Config) -> Config:
    """A copy of `cfg` with the null 'auto' fields that depend on other fields filled in."""
    cfg = copy.deepcopy(cfg)
    model, data, ev = cfg.model, cfg.data, cfg.eval
    if model.decoder_norm is None:
        model.decoder_norm = model.norm
    if model.decoder_channels is None:
        unet = list(UNET_DECODER_CHANNELS[: model.encoder_depth])
        model.decoder_channels = unet if model.arch == "unet" else DEEPLAB_DECODER_CHANNELS
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

    model, data, train, ev = cfg.model, cfg.data, cfg.train, cfg.eval
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
    if model.encoder.startswith("knresnet") and model.norm != "kn":
        fail(
            "model.norm",
            f"{model.encoder} is kernel normalized by design, so norm must be 'kn' (got "
            f"'{model.norm}'); use encoder resnet18|34|50 for a {model.norm} baseline, or model.decoder_norm",
        )
    if model.arch == "deeplabv3plus" and model.encoder_depth < 3:
        fail("model.encoder_depth", f"deeplabv3plus needs encoder_depth >= 3, got {model.encoder_depth}")
    channels = model.decoder_channels
    if model.arch == "unet" and channels is not None and not isinstance(channels, list):
        fail("model.decoder_channels", f"unet takes a list, one value per encoder stage, got {channels}")
    if model.arch == "unet" and isinstance(channels, list) and len(channels) != model.encoder_depth:
        fail("model.decoder_channels", f"unet needs one value per encoder stage ({model.encoder_depth})")
    if model.arch != "unet" and isinstance(channels, list):
        fail("model.decoder_channels", f"{model.arch} takes one integer, got {channels}")
    if ev.crop_size is not None and ev.stride is not None:
        if any(s > c for s, c in zip(ev.stride, ev.crop_size, strict=True)):
            fail("eval.stride", f"{ev.stride} exceeds eval.crop_size {ev.crop_size}: windows skip pixels")


# ----------------------------------------------------------------------------------------------------------
# Loading and saving


def config_from_dict(d: Mapping[str, Any], source: str = "<config>") -> Config:
    """A validated, resolved Config from a plain nested mapping (e.g. the one stored in a checkpoint)."""
    cfg = resolve(_build(Config, d, "", source))
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
    cfg = apply_overrides(_build(Config, data, "", str(path)), overrides)
    if cfg.name is None:
        cfg.name = path.stem
    cfg = resolve(cfg)
    _check_consistency(cfg, f"{path} (with overrides)" if overrides else str(path))
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as YAML atomically (temp file in the same folder, then rename)."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    with atomic_open(path) as f:
        f.write(text)
