import dataclasses

import pytest
import yaml

from segkn.config import (
    Config,
    ConfigError,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    resolve,
    save_config,
)


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_merge(tmp_path):
    path = write(
        tmp_path,
        "model:\n  arch: unet\n  encoder: resnet18\n  norm: bn\ntrain:\n  lr: 1e-4\n  iterations: 8.0e4\n",
    )
    cfg = load_config(path)
    assert cfg.model.arch == "unet" and cfg.model.output_stride == 32  # the architecture's default
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # PyYAML reads 1e-4 as a string
    assert cfg.train.iterations == 80000 and isinstance(cfg.train.iterations, int)
    assert cfg.name == "recipe" and cfg.run_path.as_posix() == "runs/recipe"
    # resolved fields
    assert cfg.model.decoder_norm == "bn"
    assert cfg.model.decoder_channels == [256, 128, 64, 32, 16]
    assert cfg.data.normalize == "imagenet"


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.model == resolve(Config()).model
    assert cfg.data.normalize == "none" and cfg.model.decoder_channels == 256
    assert cfg.model.output_stride == 16  # deeplabv3plus's default


def test_overrides(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.01\n  amp: bf16\n")
    cfg = load_config(
        path,
        [
            "train.lr=0.02",
            "model.encoder=resnet34",
            "model.norm=bn",
            "data.crop_size=[256,256]",
            "train.amp=null",
            "eval.mode=slide",
        ],
    )
    assert cfg.train.lr == 0.02 and cfg.model.norm == "bn" and cfg.train.amp is None
    assert cfg.data.crop_size == [256, 256]
    assert cfg.eval.crop_size == [256, 256] and cfg.eval.stride == [171, 171]
    assert load_config(path, ["train.amp=off"]).train.amp == "off"  # YAML reads bare off as false
    assert load_config(path, ["data.crop_size=384"]).data.crop_size == [384, 384]


def test_model_to_dict_has_factory_keys():
    keys = {
        "arch",
        "encoder",
        "encoder_depth",
        "norm",
        "decoder_norm",
        "num_classes",
        "output_stride",
        "dropout_p",
        "decoder_dropout",
        "encoder_weights",
        "in_channels",
        "decoder_channels",
    }
    assert set(ModelConfig().to_dict()) == keys


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'train.lrr'" in msg and "did you mean 'train.lr'" in msg
    assert "valid keys in 'train'" in msg and "weight_decay" in msg


def test_unknown_key_in_other_section_suggested(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.crop_size' \(did you mean 'data.crop_size'"):
        load_config(write(tmp_path, "model:\n  crop_size: 5\n"))


def test_unknown_override_key(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'train.lrr=0.1': unknown key 'train.lrr'.*train.lr"):
        load_config(write(tmp_path, ""), ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        load_config(write(tmp_path, ""), ["seed.x=1"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  lr: abc\n", "train.lr: expected a number, got 'abc'"),
        ("train:\n  iterations: 1.5\n", "train.iterations: expected an integer, got 1.5"),
        ("train:\n  lr: -1\n", "train.lr: must be > 0.0"),
        ("data:\n  hflip: 3\n", "data.hflip: expected true or false, got 3"),
        ("model:\n  norm: batch\n", "model.norm: expected one of kn, bn, gn, ln, none, got 'batch'"),
        ("model:\n  decoder_norm: knn\n", "did you mean 'kn'"),
        ("model:\n  output_stride: 12\n", "model.output_stride: expected one of 8, 16, 32 or null, got 12"),
        ("data:\n  crop_size: [1, 2, 3]\n", "data.crop_size: expected 2 values, got 3"),
        ("data:\n  crop_size: [512, x]\n", r"data.crop_size\[1\]: expected an integer, got 'x'"),
        ("data:\n  type: voc\n", "data.root: required for data.type 'voc'"),
        ("run_dir: 5\n", r"run_dir: expected a string, got 5 \(quote it"),
        ("train: 3\n", "expected a mapping of keys at 'train', got 3"),
        ("- a\n- b\n", "expected a mapping of keys at the top level"),
        ("model:\n  arch: unet\n  decoder_channels: [8, 8]\n", "unet needs one value per encoder stage"),
        ("model:\n  arch: unet\n  decoder_channels: 16\n", "unet takes a list, one value per encoder stage"),
        ("model:\n  decoder_channels: [8, 8]\n", "model.decoder_channels: deeplabv3plus takes one integer"),
        ("model:\n  norm: gn\n", "model.norm: knresnet18 is kernel normalized by design"),
        ("model:\n  encoder_depth: 2\n", "deeplabv3plus needs encoder_depth >= 3"),
        ("model:\n  dropout_p: 1.0\n", "model.dropout_p: must be < 1.0"),
        ("train:\n  lr: 1e-5\n", "train.min_lr: 0.0001 is above train.lr"),
        ("train:\n  compile: fast\n", "train.compile: expected one of auto, true, false, got 'fast'"),
        ("eval:\n  compile: 1\n", "eval.compile: expected one of auto, true, false, got 1"),
        ("eval:\n  compile: aut\n", "did you mean 'auto'"),
        ("train:\n  channels_last: auto\n", "train.channels_last: expected true or false, got 'auto'"),
        ("data:\n  eval_keep_ratio: true\n", "data.eval_keep_ratio: needs data.eval_resize"),
    ],
)
def test_invalid_values(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path)
    assert str(err.value).startswith(str(path))


def test_compile_and_channels_last_keys(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.train.compile == cfg.eval.compile == "auto"
    assert cfg.train.channels_last is cfg.eval.channels_last is False
    cfg = load_config(
        write(tmp_path, "train:\n  compile: on\n"), ["eval.compile=false", "eval.channels_last=true"]
    )
    assert cfg.train.compile is True and cfg.eval.compile is False and cfg.eval.channels_last is True
    assert load_config(write(tmp_path, "eval:\n  compile: auto\n")).eval.compile == "auto"
    with pytest.raises(ConfigError, match=r"override 'train.compile=maybe': train.compile: expected one of"):
        load_config(write(tmp_path, ""), ["train.compile=maybe"])


def test_missing_file_and_yaml_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, "model:\n  arch: unet\ntrain:\n  lr: [0.1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=rf"{path}:5:\d+: YAML syntax error"):
        load_config(path)


def test_parse_override():
    assert parse_override("train.lr=0.02") == ("train.lr", 0.02)
    assert parse_override("data.crop_size=[256, 256]") == ("data.crop_size", [256, 256])
    assert parse_override("model.encoder_weights=/w/a=b.pth") == ("model.encoder_weights", "/w/a=b.pth")
    assert parse_override("train.amp=") == ("train.amp", None)
    with pytest.raises(ConfigError, match="missing '='"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="cannot read the value"):
        parse_override("data.crop_size=[1,2")
    with pytest.raises(ConfigError, match="dotted key"):
        parse_override("train..lr=1")


def test_apply_overrides_does_not_mutate():
    cfg = resolve(Config())
    new = apply_overrides(cfg, ["train.lr=0.5", "model={norm: gn}"])
    assert new.train.lr == 0.5 and new.model.norm == "gn" and cfg.train.lr == 0.01


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  type: folder\n  root: /data/x\n"), ["train.amp=fp16"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left
    assert yaml.safe_load(out.read_text())["data"]["root"] == "/data/x"
    assert load_config(out) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_save_config_failure_leaves_old_file(tmp_path, monkeypatch):
    out = tmp_path / "config.yaml"
    out.write_text("old\n")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("segkn.atomic.os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_config(resolve(Config()), out)
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_config_is_plain_dataclass():
    cfg = resolve(Config())
    assert dataclasses.is_dataclass(cfg)
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()


def test_model_words_are_the_registries(tmp_path):
    from segkn.models.factory import ENCODERS

    with pytest.raises(
        ConfigError, match=f"model.encoder: expected one of {', '.join(ENCODERS)}, got 'resnet9'"
    ):
        load_config(write(tmp_path, "model:\n  encoder: resnet9\n"))


def test_retired_train_keys_load_with_their_old_value(tmp_path):
    old = {"train": {"lr_schedule": "poly", "aux_loss": 0.0, "lr": 0.02}}
    assert config_from_dict(old).train.lr == 0.02 and "aux_loss" not in config_from_dict(old).train.to_dict()
    assert load_config(write(tmp_path, ""), ["train.lr_schedule=poly"]).train == resolve(Config()).train
    with pytest.raises(ConfigError, match=r"^ckpt: 'train.aux_loss' is retired; it only took 0.0: remove it"):
        config_from_dict({"train": {"aux_loss": 0.4}}, source="ckpt")
    with pytest.raises(ConfigError, match="'train.lr_schedule' is retired"):
        load_config(write(tmp_path, "train:\n  lr_schedule: step\n"))


def test_demo_checkpoint_config_loads():
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[1] / "weights" / "shapes_unet_knresnet18_kn_2k_64x64.pth"
    stored = torch.load(path, map_location="cpu", weights_only=True)["config"]
    assert {"lr_schedule", "aux_loss"} <= set(stored["train"])  # written before those keys were retired
    cfg = config_from_dict(stored, source=str(path))
    assert cfg.model.output_stride == stored["model"]["output_stride"] == 16


def test_privacy_is_off_by_default_and_reads_its_keys(tmp_path):
    assert load_config(write(tmp_path, "")).privacy.enabled is False
    cfg = load_config(
        write(tmp_path, "model:\n  norm: kn\n"),
        [
            "privacy.enabled=true",
            "privacy.target_epsilon=8",
            "privacy.accountant=prv",
            "privacy.max_epsilon=9",
        ],
    )
    p = cfg.privacy
    assert (p.enabled, p.target_epsilon, p.noise_multiplier, p.accountant) == (True, 8.0, None, "prv")
    assert (p.delta, p.max_grad_norm, p.poisson_sampling, p.max_epsilon) == (1e-5, 1.0, True, 9.0)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["privacy.enabled=true"],
            r"privacy.noise_multiplier: set exactly one of it and privacy.target_epsilon",
        ),
        (
            ["privacy.enabled=true", "privacy.noise_multiplier=1", "privacy.target_epsilon=3"],
            r"privacy.noise_multiplier: .*both are set",
        ),
        (
            ["privacy.enabled=true", "privacy.noise_multiplier=1", "train.grad_clip=1"],
            r"train.grad_clip: .*max_grad_norm",
        ),
        (["privacy.enabled=true", "privacy.noise_multiplier=1", "train.amp=fp16"], r"train.amp: fp16"),
        (
            ["privacy.enabled=true", "privacy.target_epsilon=8", "privacy.max_epsilon=4"],
            r"privacy.max_epsilon: 4.0 is below privacy.target_epsilon",
        ),
        (["privacy.accountant=gdp"], r"privacy.accountant: expected one of rdp, prv"),
        (["privacy.delta=1"], r"privacy.delta: must be < 1"),
        (
            ["privacy.max_grad_nrom=1"],
            r"unknown key 'privacy.max_grad_nrom' \(did you mean 'privacy.max_grad_norm'",
        ),
    ],
)
def test_privacy_settings_are_checked(tmp_path, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, ""), overrides)
