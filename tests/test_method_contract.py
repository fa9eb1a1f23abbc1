"""The method contract, for every method of the package (read from the registry, so a new
method file is covered without a line here): the batch keys it declares are checked in one
place (:meth:`Method.check_batch`, run by the module's call), the schema's rules on its
options are checked when it is built, and :func:`create_method` / :func:`list_methods` work
for it.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import torch
from synthetic import write_synthetic_cache
from test_mlcl import write_composed_cache

from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.core.errors import ConfigError
from featvlr.core.schema import rule_of
from featvlr.data import CaptionBatches
from featvlr.data.composed import ComposedBatches
from featvlr.methods import StepState, create_method, get_method, list_methods
from featvlr.methods.base import TEXT_KEYS, FeatureDims
from featvlr.training.trainer import feature_dims

METHODS = [n for n in list_methods() if get_method(n).__module__.startswith("featvlr.")]
BATCHES = {"cross_modal": CaptionBatches, "composed": ComposedBatches}
DIMS = FeatureDims(region_dim=8, n_regions=4, text_dim=8, global_dim=8)


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    return {"cross_modal": write_synthetic_cache(root / "syn.h5"), "composed": write_composed_cache(root / "comp.h5")}


def built(name: str, caches: dict[str, Path], *overrides: str):
    """``(method, first training batch)`` of ``name`` on the synthetic cache of its task (built
    as if the cache had global image vectors, so that options asking for them build)."""
    task = get_method(name).task
    cfg = load_config(None, [f"method={name}", f"data.cache={caches[task]}", "data.dataset=synthetic",
                             *overrides])
    split = FeatureStore(caches[task]).split("train")
    torch.manual_seed(0)
    batches = BATCHES[task](split, batch_size=8, seed=0)
    batches.set_epoch(0)
    dims = feature_dims(split)
    dims = dataclasses.replace(dims, global_dim=dims.global_dim or 8)
    return create_method(cfg, dims=dims), batches[0]


def test_list_methods_by_task():
    cross, composed = list_methods(task="cross_modal"), list_methods(task="composed")
    assert sorted(cross + composed) == list_methods() and not set(cross) & set(composed)
    assert {"vse", "hrem", "covlr", "rvlr", "gls"} <= set(cross) and {"combiner", "mlcl"} <= set(composed)
    with pytest.raises(ConfigError, match="unknown task 'composd'"):
        list_methods(task="composd")


def test_create_method_from_a_config_a_name_or_options():
    cfg = load_config(None, ["method=vse", "model.embed_dim=8", "loss.margin=0.3"])
    method = create_method(cfg, dims=DIMS)
    assert type(method) is get_method("vse") and method.model_opts == cfg.model and method.loss_opts == cfg.loss
    assert method.training
    other = create_method(cfg, loss_opts={"margin": 0.1}, dims=DIMS)
    assert other.model_opts == cfg.model and other.loss_opts.margin == 0.1 and other.loss_opts.max_violation
    plain = create_method("vse", {"embed_dim": 8}, dims=DIMS)
    assert plain.model_opts.embed_dim == 8 and plain.loss_opts == get_method("vse").LossOptions()
    with pytest.raises(ConfigError, match="unknown config key 'model.embed_dims'; did you mean 'embed_dim'"):
        create_method("vse", {"embed_dims": 8}, dims=DIMS)
    with pytest.raises(ConfigError, match="unknown method 'vsee'; did you mean 'vse'"):
        create_method("vsee", dims=DIMS)


def _bad_value(f: dataclasses.Field, tp) -> typing.Any:
    """One value that the field's rule refuses."""
    rule = rule_of(f)
    is_list = typing.get_origin(tp) is list
    if rule.choices:
        bad = "nonsense"
    elif rule.min is not None:
        bad = rule.min if rule.min_open else rule.min - 1
    else:
        bad = rule.max if rule.max_open else rule.max + 1
    return [bad] if is_list else bad


@pytest.mark.parametrize("name", METHODS)
def test_options_built_in_code_are_checked_like_a_config(name):
    """Every rule of every option refuses a bad value when the method is built (no method
    re-checks a range or a choice itself: the schema's check is the one place)."""
    cls = get_method(name)
    checked = 0
    for section, options in (("model", cls.ModelOptions), ("loss", cls.LossOptions)):
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            if rule_of(f) is None:
                continue
            given = {f.name: _bad_value(f, hints[f.name])}
            args = (given, None) if section == "model" else (None, given)
            with pytest.raises(ConfigError, match=re.escape(f"{section}.{f.name}")) as err:
                create_method(name, *args, dims=DIMS)
            assert err.value.key == f"{section}.{f.name}"
            checked += 1
    assert checked


@pytest.mark.parametrize("name", METHODS)
def test_batch_keys_are_declared_and_checked_before_the_step(name, caches):
    method, batch = built(name, caches)
    keys = get_method(name).batch_keys
    assert keys and all(isinstance(k, str) for k in keys)
    required = method.required_batch_keys()
    assert set(keys) <= set(required)
    method.check_batch(batch)
    for key in required:
        short = {k: v for k, v in batch.items() if k != key}
        with pytest.raises(ConfigError, match=rf"the batches lack {key} \(needed by"):
            method(short, StepState(epoch=1))


@pytest.mark.parametrize("name, override, key, why", [
    ("covlr", "loss.image_feature=global", "global_image", "loss.image_feature=global"),
    ("rvlr", "model.teacher_image=global", "global_image", "model.teacher_image=global"),
    ("mlcl", "loss.aug_source=cache", "reference_aug", "loss.aug_source=cache"),
])
def test_options_add_batch_keys(name, override, key, why, caches):
    method, batch = built(name, caches, override)
    assert method.required_batch_keys()[key].startswith(why)
    batch.pop(key, None)  # the synthetic caches have neither global vectors nor augmented views
    with pytest.raises(ConfigError, match=rf"the batches lack {key} \(needed by {re.escape(why)}"):
        method(batch, StepState(epoch=1))


def test_a_text_batch_is_checked_for_the_text_keys_only(caches):
    method, batch = built("vse", caches)
    text_only = {k: v for k, v in batch.items() if k in ("pooled_text", "text_ids")}
    with pytest.raises(ConfigError, match="this cache holds pooled text vectors only") as err:
        method.check_batch(text_only, keys=TEXT_KEYS)
    assert "regions" not in str(err.value)
