"""Options built in code (``create_method`` with mappings, option objects) are checked for the
types of their fields' annotations and never take ``None`` where a field declares a rule, in
the config loader's words; every shipped config still builds its method."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from featvlr.config import load_config
from featvlr.core.errors import ConfigError
from featvlr.core.schema import check_type
from featvlr.methods import create_method, get_method
from featvlr.methods.base import FeatureDims

DIMS = FeatureDims(region_dim=8, n_regions=4, text_dim=8, global_dim=8)
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name, model, loss, key, message", [
    ("gls", {"stage": 1.5}, None, "model.stage", "model.stage: expected an integer, got 1.5"),
    ("covlr", None, {"modalities": "image"}, "loss.modalities",
     "loss.modalities: expected a list, got str 'image'"),
    ("vse", {"pooling": None}, None, "model.pooling", "model.pooling: expected a string, got None"),
    ("vse", {"embed_dim": "16"}, None, "model.embed_dim", "model.embed_dim: expected an integer, got '16'"),
    ("vse", {"embed_dim": True}, None, "model.embed_dim", "model.embed_dim: expected an integer, got True"),
    ("vse", None, {"margin": "0.2"}, "loss.margin", "loss.margin: expected a number, got '0.2'"),
    ("vse", None, {"max_violation": 1}, "loss.max_violation", "loss.max_violation: expected true/false, got 1"),
    ("covlr", None, {"modalities": ["image", None]}, "loss.modalities",
     "loss.modalities[1]: expected a string, got None"),
])
def test_mappings_of_the_wrong_type_are_config_errors(name, model, loss, key, message):
    with pytest.raises(ConfigError) as err:
        create_method(name, model, loss, dims=DIMS)
    assert str(err.value) == message and err.value.key == key


def test_the_words_are_the_config_loaders():
    with pytest.raises(ConfigError) as loaded:
        load_config(None, ["method=gls", "model.stage=1.5"])
    with pytest.raises(ConfigError) as built:
        create_method("gls", {"stage": 1.5}, dims=DIMS)
    assert str(loaded.value) == f"--set {built.value}"  # the loader adds where the value came from


def test_option_objects_are_checked_too():
    vse = get_method("vse")
    with pytest.raises(ConfigError, match=r"^model\.embed_dim: expected an integer, got '16'$"):
        vse(vse.ModelOptions(embed_dim="16"), vse.LossOptions(), DIMS)
    with pytest.raises(ConfigError, match=r"^model\.pooling: expected a string, got None$"):
        vse(vse.ModelOptions(pooling=None), vse.LossOptions(), DIMS)


def test_a_rule_refuses_none_even_past_the_type():
    """A field with a rule never takes None: the rule's own check says so as well."""
    from featvlr.core.schema import check_value, rule_of

    field = next(f for f in get_method("vse").ModelOptions.__dataclass_fields__.values() if f.name == "pooling")
    with pytest.raises(ConfigError, match=r"^model\.pooling: expected one of .*, got None$"):
        check_value(None, rule_of(field), "model.pooling", ConfigError)


def test_accepted_values_build_as_before():
    method = create_method("vse", {"embed_dim": 16.0}, {"margin": 1}, dims=DIMS)  # as a config loads them
    assert method.model_opts.embed_dim == 16 and type(method.model_opts.embed_dim) is int
    assert method.loss_opts.margin == 1
    covlr = create_method("covlr", None, {"modalities": ("image", "text")}, dims=DIMS)
    assert covlr.loss_opts.modalities == ("image", "text")


@pytest.mark.parametrize("value, tp, ok", [
    (3, int, True), (3.0, int, True), (3.5, int, False), (False, int, False),
    (2, float, True), (0.5, float, True), (True, float, False), ("1e-4", float, False),
    ("x", str, True), (1, str, False), (True, bool, True), (0, bool, False),
    ([1, 2], list[int], True), ((1, 2), tuple[int, ...], True), ([1, "2"], list[int], False), ("ab", list[str], False),
    (None, int | None, True), (None, int, False), (4, int | None, True), ("4", int | None, False),
    ({"a": 1}, dict, True), (object(), Any, True),
])
def test_check_type(value, tp, ok):
    def error(message):
        return ConfigError(message)

    if ok:
        check_type(value, tp, "x", error)
    else:
        with pytest.raises(ConfigError, match=r"^x(\[\d\])?: expected "):
            check_type(value, tp, "x", error)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_builds_its_method(path):
    cfg = load_config(path)
    method = create_method(cfg, dims=DIMS)
    assert method.name == cfg.method and method.model_opts == cfg.model and method.loss_opts == cfg.loss
