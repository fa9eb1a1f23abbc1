"""Config schema: YAML values, --set overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from featvlr.config import config_to_dict, load_config, save_config
from featvlr.core.errors import ConfigError, InputError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: vse\ntrain:\n  lr: 1e-4\n  epochs: 3\nmodel:\n  embed_dim: 64\n")
    cfg = load_config(path, ["train.lr=3e-4", "loss.margin=0.1", "train.lr_steps=[2, 3]", "loss.id_mask=false"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.epochs == 3
    assert cfg.model.embed_dim == 64
    assert cfg.loss.margin == pytest.approx(0.1)
    assert cfg.loss.id_mask is False
    assert cfg.train.lr_steps == [2, 3]
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "did you mean 'lr'"),
    ("trian.lr=1", "did you mean 'train'"),
    ("loss.margn=0.1", "did you mean 'margin'"),
    ("train.epochs=many", "train.epochs: expected an integer"),
    ("train.amp=maybe", "train.amp: expected true/false"),
    ("method=vsee", "did you mean 'vse'"),
    ("train.lr", "--set expects key=value"),
])
def test_config_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.method
    assert cfg.train.select_split != cfg.data.test_split or cfg.train.allow_test_selection
