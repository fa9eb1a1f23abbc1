"""Evaluation and inference check the first batch of a split for the keys the method's
encoders read: a cache of pooled text vectors only (no token features) is one error that
names the missing key and where it comes from, not a ``KeyError`` from inside the encoder."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_tiny_cache

from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.core.errors import ConfigError, FeatvlrError
from featvlr.evaluation.embed import embed_split
from featvlr.methods.base import FeatureDims
from featvlr.methods.registry import create_method

N_IMG, PER, D = 6, 5, 4
DIMS = FeatureDims(region_dim=D, n_regions=3, text_dim=D)
POOLED_ONLY = "the batches lack tokens (needed by method 'vse'; from texts/<split>/tokens: this cache holds pooled"


def write_pooled_only_cache(path: Path, *, n_img: int = N_IMG, per: int = PER, d: int = D) -> Path:
    """The tiny cache's layout without token features: regions, pooled text vectors."""
    rng = np.random.default_rng(0)
    n_txt = n_img * per
    with CacheWriter(path) as w:
        w.write("images/test/regions", rng.normal(size=(n_img, 3, d)).astype(np.float32))
        w.write("texts/test/pooled", rng.normal(size=(n_txt, d)).astype(np.float32))
        w.write("texts/test/offsets", np.zeros(n_txt + 1, dtype=np.int64))
        w.write("texts/test/image_index", np.arange(n_txt, dtype=np.int64) // per)
        w.write("relevance/test/rougeL", rng.random((n_txt, n_img)).astype(np.float32))
    return path


def _vse():
    return create_method("vse", {"embed_dim": 8, "pooling": "mean"}, dims=DIMS)


def test_embed_split_of_a_pooled_only_cache_names_the_missing_tokens(tmp_path):
    split = FeatureStore(write_pooled_only_cache(tmp_path / "pooled.h5")).split("test")
    assert not split.has_tokens
    with pytest.raises(ConfigError) as err:
        embed_split(_vse(), split, batch_size=4)
    assert isinstance(err.value, FeatvlrError)
    message = str(err.value)
    assert message.startswith(POOLED_ONLY) and "\n" not in message


def test_embed_split_of_a_cache_with_tokens_is_unchanged(tmp_path):
    split = FeatureStore(write_tiny_cache(tmp_path / "tiny.h5", n_img=N_IMG, per=PER, d=D)).split("test")
    images, texts = embed_split(_vse(), split, batch_size=4)
    assert images.shape == (N_IMG, 8) and texts.shape == (N_IMG * PER, 8)


def test_training_only_keys_are_not_asked_of_evaluation_batches(tmp_path):
    """``loss.image_feature=global`` needs global image vectors in a training batch only: a
    cache without them still evaluates (covlr's encoders read regions and tokens)."""
    split = FeatureStore(write_tiny_cache(tmp_path / "tiny.h5", n_img=N_IMG, per=PER, d=D)).split("test")
    method = create_method("covlr", {"embed_dim": 8}, {"image_feature": "global"}, dims=DIMS)
    assert "global_image" in method.required_batch_keys()
    images, texts = embed_split(method, split, batch_size=4)
    assert images.shape == (N_IMG, 8) and texts.shape == (N_IMG * PER, 8)


def _run(tmp_path: Path, cache: Path) -> Path:
    from featvlr.config import config_from_dict, config_to_dict
    from featvlr.core.checkpoint import save_checkpoint

    cfg = config_from_dict({"method": "vse", "data": {"cache": str(cache)},
                            "model": {"embed_dim": 8, "pooling": "mean"}})
    run = tmp_path / "run"
    save_checkpoint(run / "ckpt" / "best.pt", {"config": config_to_dict(cfg), "dims": dataclasses.asdict(DIMS),
                                               "model": create_method(cfg, dims=DIMS).state_dict()})
    return run


def test_eval_of_a_run_on_a_pooled_only_cache_is_one_line(tmp_path, cli):
    tokens = write_tiny_cache(tmp_path / "tiny.h5", n_img=N_IMG, per=PER, d=D)
    run = _run(tmp_path, tokens)
    pooled = write_pooled_only_cache(tmp_path / "pooled.h5")
    code, out, err = cli("eval", run, "--cache", pooled, "--split", "test", "--scenarios", "i2t,t2i",
                         "--no-plots")
    assert code == 2, (out, err)
    assert err.startswith("featvlr: error: ") and err.count("\n") == 1, err
    assert POOLED_ONLY in err and "KeyError" not in err
    code, _, err = cli("eval", run, "--split", "test", "--scenarios", "i2t,t2i", "--no-plots")
    assert code == 0, err
    assert "i2t/R@1" in json.loads((run / "eval" / "test.json").read_text())["metrics"]


def test_retrieval_model_index_and_images_of_a_pooled_only_cache(tmp_path):
    import featvlr

    run = _run(tmp_path, write_tiny_cache(tmp_path / "tiny.h5", n_img=N_IMG, per=PER, d=D))
    model = featvlr.load(run, device="cpu", cache=write_pooled_only_cache(tmp_path / "pooled.h5"))
    assert model.encode_images([0, 1], split="test").shape == (2, 8)
    with pytest.raises(ConfigError, match="^" + re.escape(POOLED_ONLY)):
        model.index("test", save=False)
    with pytest.raises(ConfigError, match=r"the batches lack regions \(needed by method 'vse'; from images/"):
        model.encode_images(split="test", global_features=np.zeros((2, D), dtype=np.float32))


class _PooledEncoder:
    """A text encoder stand-in that gives pooled sentence vectors only."""

    has_tokens = False
    dim = D

    def encode_pooled(self, captions):
        return np.ones((len(captions), D), dtype=np.float32)


def test_retrieval_model_encode_texts_on_a_pooled_only_cache(tmp_path):
    import featvlr

    run = _run(tmp_path, write_tiny_cache(tmp_path / "tiny.h5", n_img=N_IMG, per=PER, d=D))
    model = featvlr.load(run, device="cpu", cache=write_pooled_only_cache(tmp_path / "pooled.h5"))
    model._encoder = _PooledEncoder()
    with pytest.raises(ConfigError) as err:
        model.encode_texts(["a dog on the beach"], split="test")
    assert str(err.value).startswith(POOLED_ONLY)
