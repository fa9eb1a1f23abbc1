"""Adding a method is one file: the toy method of ``docs/adding_a_method.md``, trained and evaluated.

``toy_mean`` is read from the page (:mod:`doc_toy`): pooled regions and the pooled caption
vector, each through one ``Linear`` into a shared space, trained with the soft-id InfoNCE
loss. Nothing in the package lists it: registering it is importing its module (the page's
code block, or ``featvlr/methods/toy_mean.py`` when the file is dropped into the package, as
``tests/test_extension_contract.py`` does).
"""
from __future__ import annotations

import json

import pytest
from doc_toy import load_toy_method
from synthetic import write_synthetic_cache

from featvlr.config import load_config
from featvlr.core.errors import ConfigError
from featvlr.inference.loading import load_method
from featvlr.methods import get_method, list_methods
from featvlr.training.trainer import train

toy = load_toy_method()


def toy_config(cache, **train):
    return load_config(base={
        "method": "toy_mean",
        "data": {"cache": str(cache), "dataset": "synthetic"},
        "model": {"embed_dim": 16},
        "train": {"epochs": 1, "batch_size": 32, "lr": 1e-2, "progress": False, "device": "cpu", **train},
        "eval": {"scenarios": ["i2t", "t2i"], "dev_scenarios": ["i2t", "t2i"]},
    })


def test_the_toy_method_is_registered_by_importing_its_module():
    assert "toy_mean" in list_methods(task="cross_modal") and get_method("toy_mean") is toy.ToyMean
    assert {"vse", "hrem", "covlr", "rvlr", "gls", "mlcl", "combiner"} <= set(list_methods())
    cfg = toy_config("unused.h5")
    assert cfg.model == toy.ToyModelOptions(embed_dim=16) and cfg.loss == toy.ToyLossOptions()


def test_toy_options_are_validated_like_every_method():
    with pytest.raises(ConfigError, match="did you mean 'embed_dim'"):
        load_config(base={"method": "toy_mean", "model": {"embed_dims": 8}})
    with pytest.raises(ConfigError, match=r"model.embed_dim: expected >= 1, got 0"):
        load_config(base={"method": "toy_mean", "model": {"embed_dim": 0}})
    with pytest.raises(ConfigError, match=r"model.pooling: expected one of mean, max, got 'sum'"):
        load_config(base={"method": "toy_mean", "model": {"pooling": "sum"}})


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_the_toy_method_trains_and_evaluates(tmp_path, pooling):
    cache = write_synthetic_cache(tmp_path / "syn.h5")
    cfg = toy_config(cache)
    cfg.model.pooling = pooling
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "ckpt" / "best.pt").is_file() and (run / "ckpt" / "last.pt").is_file()
    assert (run / "config.yaml").is_file() and result.epochs_run == 1
    metrics = json.loads((run / "eval" / "test.json").read_text())["metrics"]
    for key in ("i2t/R@1", "i2t/R@5", "i2t/R@10", "t2i/R@1", "t2i/R@10", "rsum"):
        assert 0.0 <= metrics[key] <= (600.0 if key == "rsum" else 100.0), key
    assert result.test_metrics and result.best_epoch == 1
    # 16 test images: chance is R@10 = 62.5 for t2i; the cache is learnable.
    assert metrics["t2i/R@10"] > 62.5
    method, cfg = load_method(run)
    assert isinstance(method, toy.ToyMean) and cfg.method == "toy_mean" and not method.training
    assert cfg.model.pooling == pooling
