"""Several named relevance matrices (relevance/<split>/<kind>, e.g. TERAN's SPICE): NDCG per
kind under keys that name it, against a naive loop; extract and eval accept KIND=FILE."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from synthetic import write_tiny_cache
from test_extract_precomp import make_precomp

from featvlr.cache.store import FeatureStore
from featvlr.core.errors import ConfigError
from featvlr.evaluation.cross_modal import evaluate_cross_modal
from featvlr.extract.precomp import extract_precomp
from featvlr.retrieval.relevance import parse_relevance_specs


def naive_ndcg_exp(scores: np.ndarray, rel: np.ndarray, k: int) -> float:
    """Mean over query rows of exp-gain NDCG@k (TERAN), by sorting each full row."""
    out = []
    for s, r in zip(scores, rel):
        order = np.argsort(-s, kind="stable")[:k]
        disc = 1.0 / np.log2(np.arange(2, len(order) + 2))
        dcg = np.sum((2.0 ** r[order] - 1) * disc)
        ideal = np.sum((2.0 ** np.sort(r)[::-1][:k] - 1) * disc)
        out.append(dcg / ideal if ideal > 0 else 0.0)
    return float(np.mean(out))


@pytest.fixture()
def cache(tmp_path):
    path = write_tiny_cache(tmp_path / "c.h5", n_img=12, per=5, d=6, rng=3)
    spice = np.random.default_rng(9).random((60, 12)).astype(np.float32)
    with h5py.File(path, "a") as h5:
        h5["relevance/test/spice"] = spice
    return path, spice


def test_ndcg_per_kind_against_naive(cache):
    path, spice = cache
    split = FeatureStore(path).split("test")
    assert split.relevance_kinds() == ["rougeL", "spice"]
    rouge = split.relevance("rougeL")
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(12, 6, generator=g), torch.randn(60, 6, generator=g)
    res = evaluate_cross_modal(img, txt, split, ["i2t", "t2i"], teran_ndcg=True, ndcg_exp_k=25)
    sims = (img @ txt.t()).numpy()
    for kind, rel, sfx in (("rougeL", rouge, ""), ("spice", spice, "_spice")):
        assert res[f"t2i/ndcg_exp@25{sfx}"] == pytest.approx(naive_ndcg_exp(sims.T, rel, 25), abs=1e-5), kind
        assert res[f"i2t/ndcg_exp@25{sfx}"] == pytest.approx(naive_ndcg_exp(sims, rel.T, 25), abs=1e-5), kind
    assert "i2t/ndcg_exp@25_nonzero_spice" in res
    assert not any(k.endswith("_rougeL") for k in res)


def test_eval_cli_relevance_kinds(tmp_path, cli):
    rng = np.random.default_rng(1)
    sims = rng.standard_normal((8, 40)).astype(np.float32)
    rouge, spice = rng.random((40, 8)).astype(np.float32), rng.random((40, 8)).astype(np.float32)
    np.save(tmp_path / "sims.npy", sims)
    np.save(tmp_path / "rouge.npy", rouge)
    spice.tofile(tmp_path / "spice_raw.npy")  # TERAN's headerless layout
    code, _, err = cli("eval", "--sims", tmp_path / "sims.npy", "--relevance", tmp_path / "rouge.npy",
                       "--relevance", f"spice={tmp_path / 'spice_raw.npy'}", "--json", tmp_path / "r.json",
                       "--no-plots")
    assert code == 0, err
    record = json.loads((tmp_path / "r.json").read_text())
    m = record["metrics"]
    assert m["t2i/ndcg_exp@25"] == pytest.approx(naive_ndcg_exp(sims.T, rouge, 25), abs=1e-5)
    assert m["t2i/ndcg_exp@25_spice"] == pytest.approx(naive_ndcg_exp(sims.T, spice, 25), abs=1e-5)
    assert m["i2t/ndcg_exp@25_spice"] == pytest.approx(naive_ndcg_exp(sims, spice.T, 25), abs=1e-5)


def test_parse_specs(tmp_path):
    assert parse_relevance_specs(None) == {}
    assert parse_relevance_specs("a.npy") == {"rougeL": tmp_path.__class__("a.npy")}
    got = parse_relevance_specs(["r.npy", "spice=s.npy"])
    assert {k: str(v) for k, v in got.items()} == {"rougeL": "r.npy", "spice": "s.npy"}


def test_extract_precomp_imports_a_kind(tmp_path, text_encoder):
    make_precomp(tmp_path / "p", splits=(("train", 2), ("test", 3)))
    spice = np.random.default_rng(0).random((15, 3)).astype(np.float32)
    spice.tofile(tmp_path / "spice.npy")
    out = extract_precomp(tmp_path / "p", tmp_path / "o.h5", text_model=text_encoder, progress=False,
                          relevance=f"test:spice={tmp_path / 'spice.npy'}")
    s = FeatureStore(out).split("test")
    assert s.relevance_kinds() == ["rougeL", "spice"]
    np.testing.assert_array_equal(s.relevance("spice"), spice)
    assert FeatureStore(out).split("train").relevance_kinds() == []
    with pytest.raises(ConfigError, match="imported from"):
        extract_precomp(tmp_path / "p", tmp_path / "o2.h5", text_model=text_encoder, relevance="test:spice=compute")
    with pytest.raises(ConfigError, match="kind"):
        extract_precomp(tmp_path / "p", tmp_path / "o3.h5", text_model=text_encoder, relevance="test:9x=f.npy")
