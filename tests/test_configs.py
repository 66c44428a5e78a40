from pathlib import Path

import pytest
import yaml

from segkn.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 37


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_config_loads_and_names_what_it_is(path):
    cfg = load_config(path)
    if path.parent.name in ("ade20k", "cityscapes", "voc"):
        assert cfg.data.type == path.parent.name
        arch, encoder, norm = path.stem.split("_")[:3]
        assert (cfg.model.arch, cfg.model.encoder, cfg.model.norm) == (arch, encoder, norm)
        assert f"{cfg.train.iterations // 1000}k" in path.stem
        assert "x".join(map(str, cfg.data.crop_size)) in path.stem


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_config_states_its_output_stride(path):
    """A recipe keeps its stride when an architecture's default changes (unet's is 32, the recipes' 16)."""
    stated = yaml.safe_load(path.read_text())["model"]["output_stride"]
    assert load_config(path).model.output_stride == stated
