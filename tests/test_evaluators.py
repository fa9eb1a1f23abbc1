"""The evaluator contract: built once with a split and EvalOptions, called with each method.

An evaluator holds no state from one call to the next (two methods, in any order, each get
the metrics of the protocol functions on their own embeddings); its ``primary_metric`` is
among the metrics it returns and is what the configs select on; a run config is never
options (``EvalOptions.from_config`` is the one way from one to the other).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_synthetic_cache

from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.config import load_config
from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.composed import evaluate_composed
from featvlr.evaluation.cross_modal import evaluate_cross_modal
from featvlr.evaluation.embed import embed_composed_split, embed_split
from featvlr.evaluation.evaluators import ComposedEvaluator, CrossModalEvaluator, Evaluator
from featvlr.evaluation.options import EvalOptions
from featvlr.methods import get_method
from featvlr.methods.base import FeatureDims, Method
from featvlr.tasks import evaluate_method, get_task
from featvlr.training.run_eval import dev_metrics
from featvlr.training.trainer import feature_dims

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("cache") / "syn.h5", n_images=(16, 12, 12))


def vse(cache: Path, seed: int):
    cfg = load_config(None, [f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=16"])
    torch.manual_seed(seed)
    method = get_method("vse")(cfg.model, cfg.loss, feature_dims(FeatureStore(cache).split("train")))
    return method.eval(), cfg


def test_one_cross_modal_evaluator_scores_two_methods_as_the_protocol_does(cache):
    split = FeatureStore(cache).split("test")
    (a, _), (b, _) = vse(cache, 0), vse(cache, 1)
    opts = EvalOptions(folds=(1, 3), geometry=False)
    evaluator = get_task("cross_modal").evaluator(split, opts, None, "cpu")
    assert isinstance(evaluator, CrossModalEvaluator) and evaluator.greater_is_better
    got = {name: evaluator(m) for name, m in (("a", a), ("b", b), ("a again", a))}
    for name, m in (("a", a), ("b", b)):
        images, texts = embed_split(m, split)
        want = evaluate_cross_modal(images, texts, split, None, (1, 3), teran_ndcg=True)
        assert got[name] == want  # the same digits: the evaluator is the protocol function, no more
        assert evaluator.primary_metric in got[name]
    assert got["a again"] == got["a"] and got["a"] != got["b"]
    assert evaluate_method(a, split, opts, None, "cpu") == got["a"]


def test_dev_metrics_are_the_evaluator_of_the_run_options(cache):
    split = FeatureStore(cache).split("dev")
    method, cfg = vse(cache, 0)
    method.train()
    task = get_task("cross_modal")
    metrics = dev_metrics(method, task, split, cfg, "cpu")
    assert method.training  # the method's mode is restored
    method.eval()
    evaluator = task.evaluator(split, EvalOptions.from_config(cfg, final=False), cfg.eval.dev_scenarios, "cpu")
    assert metrics == evaluator(method)
    assert cfg.train.select_metric == evaluator.primary_metric == "rsum" and "rsum" in metrics


def test_a_run_config_is_not_options(cache):
    split = FeatureStore(cache).split("test")
    method, cfg = vse(cache, 0)
    with pytest.raises(TypeError, match="EvalOptions"):
        CrossModalEvaluator(split, cfg)
    with pytest.raises(TypeError, match="EvalOptions"):
        get_task("composed").evaluator(split, cfg)
    with pytest.raises(TypeError, match="EvalOptions"):
        evaluate_method(method, split, cfg, ["i2t", "t2i"])
    with pytest.raises(TypeError, match="run config"):
        EvalOptions.from_config(EvalOptions())
    assert EvalOptions.from_config(cfg, final=True).teran_ndcg
    assert not EvalOptions.from_config(cfg, final=False).teran_ndcg


def test_cross_modal_primary_metric_follows_the_scenarios():
    opts = EvalOptions(ks=(5, 10), ndcg_ks=(20,))
    assert CrossModalEvaluator(None, opts, "all").primary_metric == "rsum"
    assert CrossModalEvaluator(None, opts, ["t2i", "i2i", "i2t"]).primary_metric == "rsum"
    assert CrossModalEvaluator(None, opts, ["t2i"]).primary_metric == "t2i/R@5"
    assert CrossModalEvaluator(None, opts, ["t2t"]).primary_metric == "t2t/ndcg_lin@20"


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_primary_metric_is_what_the_configs_select_on(config):
    cfg = load_config(CONFIGS / config)
    task = get_task(get_method(cfg.method).task)
    options = EvalOptions.from_config(cfg, final=False)
    evaluator = task.evaluator(None, options, task.run_scenarios(cfg.eval.dev_scenarios))
    assert isinstance(evaluator, Evaluator)
    assert evaluator.primary_metric == cfg.train.select_metric


# -- composed ------------------------------------------------------------------------------

class Composer(Method):
    """Query = reference global feature + sign x modifier text vector; gallery = global feature."""

    task = "composed"
    pairwise = False

    def __init__(self, sign: float):
        super().__init__(None, None, FeatureDims())
        self.sign = sign
        self.w = torch.nn.Linear(1, 1)

    def encode_queries(self, b):
        return b["reference_image"] + self.sign * b["pooled_text"]

    def encode_images(self, b):
        return b["global_image"]


def cirr_split(path: Path, n_img: int = 12, q: int = 9, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, n_img, size=q)
    tgt = (ref + rng.integers(1, n_img, size=q)) % n_img
    subsets = np.stack([np.concatenate([[ref[i], tgt[i]], (tgt[i] + np.arange(1, 5)) % n_img]) for i in range(q)])
    with CacheWriter(path) as w:
        w.write("images/val/global", rng.normal(size=(n_img, d)).astype(np.float32))
        w.write("images/val/ids", [f"im{i}" for i in range(n_img)])
        w.write("texts/val/pooled", rng.normal(size=(q, d)).astype(np.float32))
        w.write("texts/val/offsets", np.zeros(q + 1, dtype=np.int64))
        w.write("texts/val/image_index", np.full(q, -1, dtype=np.int64))
        w.write("composed/val/reference", ref)
        w.write("composed/val/target", tgt)
        w.write("composed/val/subsets", subsets)
        w.write("composed/val/pair_ids", np.arange(100, 100 + q))
    return FeatureStore(path).split("val")


@pytest.mark.parametrize("dataset,primary", [("", "composed/arithmetic_mean"), ("cirr", "composed/arithmetic_mean"),
                                             ("shoes", "composed/recall_mean"),
                                             ("fashioniq", "composed/average_recall")])
def test_one_composed_evaluator_scores_two_methods_as_the_protocol_does(tmp_path, dataset, primary):
    split = cirr_split(tmp_path / "cirr.h5")
    evaluator = get_task("composed").evaluator(split, EvalOptions(dataset=dataset), ["composed"], "cpu")
    assert isinstance(evaluator, ComposedEvaluator) and evaluator.primary_metric == primary
    plus, minus = Composer(1.0), Composer(-1.0)
    got = {name: evaluator(m) for name, m in (("plus", plus), ("minus", minus), ("plus again", plus))}
    protocol = dataset or "cirr"
    for name, m in (("plus", plus), ("minus", minus)):
        q, g = embed_composed_split(m, split)
        assert got[name] == evaluate_composed(q, g, split.composed(), protocol=protocol)
        assert primary in got[name]
    assert got["plus again"] == got["plus"] and got["plus"] != got["minus"]


def test_a_composed_run_evaluates_its_scenario_whatever_the_config_lists(tmp_path):
    split = cirr_split(tmp_path / "cirr.h5")
    task = get_task("composed")
    assert task.run_scenarios(["i2t", "t2i"]) is None and get_task("cross_modal").run_scenarios(("i2t",)) == ["i2t"]
    with pytest.raises(FeatvlrError, match="only the composed scenario"):
        task.evaluator(split, EvalOptions(), ["i2t", "t2i"])
    assert task.evaluator(split, EvalOptions(), task.run_scenarios(["i2t", "t2i"]))(Composer(1.0))
