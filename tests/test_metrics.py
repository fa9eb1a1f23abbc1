"""Metric functions against naive full-sort references and hand-computed toy cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval.metrics import composed_recall, cross_modal_recall, ndcg

# --------------------------------------------------------------------------------------
# naive references: one full sort per query; among equal scores the ground truth goes last


def naive_rank(scores: np.ndarray, positive: np.ndarray) -> int:
    """Position of the first positive in a descending sort that puts, among equal scores,
    non-positives first (the pessimistic tie rule)."""
    order = np.lexsort((positive.astype(int), -scores.astype(np.float64)))
    return int(np.nonzero(positive[order])[0][0])


def naive_cross_modal(sims: np.ndarray, txt2img: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    n_img, n_txt = sims.shape
    r_i2t = np.array([naive_rank(sims[i], txt2img == i) for i in range(n_img)])
    r_t2i = np.array([naive_rank(sims[:, c], np.arange(n_img) == txt2img[c]) for c in range(n_txt)])
    out = {}
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * np.mean(r < k)
        out[f"{name}_medr"] = math.floor(np.median(r)) + 1
        out[f"{name}_meanr"] = r.mean() + 1
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def naive_ndcg(sims, rel, k, gain, exclude=None) -> np.ndarray:
    out = []
    for q in range(sims.shape[0]):
        keep = np.ones(sims.shape[1], bool)
        if exclude is not None and exclude[q] >= 0:
            keep[exclude[q]] = False
        s, r = sims[q][keep].astype(np.float64), rel[q][keep].astype(np.float64)
        order = np.lexsort((r, -s))  # score descending, equal scores by relevance ascending
        g = 2.0 ** r - 1 if gain == "exp" else r
        kk = min(k, len(r))
        disc = 1 / np.log2(np.arange(kk) + 2)
        dcg = (g[order][:kk] * disc).sum()
        idcg = (np.sort(g)[::-1][:kk] * disc).sum()
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return np.array(out)


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for key, value in a.items():
        assert value == pytest.approx(b[key], abs=1e-9), key


# --------------------------------------------------------------------------------------
# cross-modal recall


def test_cross_modal_toy_by_hand():
    # 2 images x 4 texts (2 captions each).
    sims = np.array([[0.9, 0.1, 0.8, 0.95],
                     [0.2, 0.3, 0.7, 0.1]], dtype=np.float32)
    m = cross_modal_recall(sims, ks=(1, 2))
    # i2t: image 0's captions {0, 1}: best 0.9 is behind 0.95 -> rank 1; image 1's {2, 3}: 0.7 first -> 0.
    assert m["i2t_R@1"] == 50.0 and m["i2t_R@2"] == 100.0
    assert m["i2t_medr"] == 1.0 and m["i2t_meanr"] == 1.5  # floor(median(1, 0) = 0.5) + 1; mean 0.5 + 1
    # t2i: text 0 -> image 0 (0.9 > 0.2) 0; text 1 -> image 0 (0.1 < 0.3) 1; text 2 -> 1 (0.7 < 0.8) 1;
    # text 3 -> image 1 (0.1 < 0.95) 1
    assert m["t2i_R@1"] == 25.0 and m["t2i_R@2"] == 100.0
    assert m["t2i_medr"] == 2.0 and m["t2i_meanr"] == 1.75
    assert m["rsum"] == 50 + 100 + 25 + 100


def test_ties_are_pessimistic():
    # every score equal: the ground truth goes behind every other candidate
    sims = np.zeros((3, 6), dtype=np.float32)
    m = cross_modal_recall(sims, ks=(1, 5, 10))
    assert m["i2t_R@1"] == 0.0
    assert m["i2t_meanr"] == 4 + 1  # 4 non-positive captions ahead
    assert m["t2i_meanr"] == 2 + 1  # 2 other images ahead
    # a tie between two positives does not push either back
    sims = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=np.float32)
    assert cross_modal_recall(sims, ks=(1,))["i2t_R@1"] == 100.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_modal_matches_naive_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    sims = np.round(rng.normal(size=(n, 5 * n)), 1).astype(np.float32)  # many ties
    ref = naive_cross_modal(sims, np.arange(5 * n) // 5)
    for chunk in (1, 37, 1000, 10**9):
        assert_same(cross_modal_recall(sims, chunk_elements=chunk), ref)
    assert_same(cross_modal_recall(torch.from_numpy(sims)), ref)


def test_cross_modal_custom_txt2img_and_orphans():
    rng = np.random.default_rng(3)
    sims = np.round(rng.normal(size=(6, 14)), 1).astype(np.float32)
    txt2img = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5, 5, 1])
    assert_same(cross_modal_recall(sims, txt2img), naive_cross_modal(sims, txt2img))
    # a text without image (-1) is a distractor for i2t and not a t2i query
    t2 = txt2img.copy()
    t2[3] = -1
    m = cross_modal_recall(sims, t2)
    r_t2i = [naive_rank(sims[:, c], np.arange(6) == t2[c]) for c in range(14) if t2[c] >= 0]
    assert m["t2i_meanr"] == pytest.approx(np.mean(r_t2i) + 1)


def test_five_fold_is_mean_of_blocks():
    rng = np.random.default_rng(4)
    n = 50
    sims = rng.normal(size=(n, 5 * n)).astype(np.float32)
    folds = [naive_cross_modal(sims[10 * f:10 * f + 10, 50 * f:50 * f + 50], np.arange(50) // 5) for f in range(5)]
    expect = {k: float(np.mean([m[k] for m in folds])) for k in folds[0]}
    got = cross_modal_recall(sims, folds=5, chunk_elements=123)
    assert_same(got, expect)
    assert got["rsum"] == pytest.approx(np.mean([m["rsum"] for m in folds]))  # not 6x


def test_cross_modal_bad_input():
    with pytest.raises(FeatvlrError, match="NaN"):
        cross_modal_recall(np.full((2, 10), np.nan, dtype=np.float32))
    with pytest.raises(FeatvlrError, match="split evenly"):
        cross_modal_recall(np.zeros((3, 10), dtype=np.float32))
    with pytest.raises(FeatvlrError, match="folds"):
        cross_modal_recall(np.zeros((6, 30), dtype=np.float32), folds=4)
    with pytest.raises(FeatvlrError, match="txt2img"):
        cross_modal_recall(np.zeros((2, 10), dtype=np.float32), txt2img=np.zeros(9, dtype=np.int64))


# --------------------------------------------------------------------------------------
# NDCG


def test_ndcg_toy_by_hand():
    sims = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
    rel = np.array([[0.0, 1.0, 0.5]], dtype=np.float32)
    # exp gains: [0, 1, 2^0.5 - 1]; ranked order gains [0, 1, 0.414]; ideal [1, 0.414, 0]
    g3 = 2 ** 0.5 - 1
    dcg = 0 + 1 / math.log2(3) + g3 / 2
    idcg = 1 + g3 / math.log2(3)
    assert ndcg(sims, rel, 3, "exp")[0] == pytest.approx(dcg / idcg)
    assert ndcg(sims, rel, 1, "linear")[0] == 0.0
    lin = (1 / math.log2(3) + 0.5 / 2) / (1 + 0.5 / math.log2(3))
    assert ndcg(sims, rel, 3, "linear")[0] == pytest.approx(lin)
    # zero relevance row -> 0; excluding the top item makes the ranking ideal
    assert ndcg(sims, np.zeros_like(rel), 3)[0] == 0.0
    top_excluded = ndcg(np.array([[0.9, 0.5, 0.1]]), np.array([[9.0, 1.0, 0.5]]), 2, "linear", exclude=[0])
    assert top_excluded[0] == pytest.approx(1.0)


def test_ndcg_ties_ordered_by_relevance_ascending():
    sims = np.array([[1.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    rel = np.array([[1.0, 0.0, 0.5, 0.2]], dtype=np.float32)
    # top-1 among three tied items: the pessimistic pick has relevance 0
    assert ndcg(sims, rel, 1, "linear")[0] == 0.0
    # top-2: relevances 0, 0.5
    expect = (0 + 0.5 / math.log2(3)) / (1 + 0.5 / math.log2(3))
    assert ndcg(sims, rel, 2, "linear")[0] == pytest.approx(expect)


@pytest.mark.parametrize("seed", [0, 1])
def test_ndcg_matches_naive(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        q, g = int(rng.integers(1, 25)), int(rng.integers(2, 60))
        sims = np.round(rng.normal(size=(q, g)), 0).astype(np.float32)  # heavy ties
        rel = np.round(rng.random((q, g)), 1).astype(np.float32)
        exclude = rng.integers(-1, g, size=q)
        for k in (1, 3, 10, 25, 100):
            for gain in ("exp", "linear"):
                chunk = int(rng.integers(1, 300))
                got = ndcg(sims, rel, k, gain, exclude, chunk_elements=chunk)
                np.testing.assert_allclose(got, naive_ndcg(sims, rel, k, gain, exclude), atol=1e-12)


def test_ndcg_exclusion_is_removal_not_zero_score():
    # all other similarities negative: a query scored 0 (the peers' way) would still rank first
    sims = np.array([[-0.1, -0.5, 0.0]], dtype=np.float32)
    rel = np.array([[0.2, 1.0, 1.0]], dtype=np.float32)
    got = ndcg(sims, rel, 1, "linear", exclude=[2])[0]
    assert got == pytest.approx(0.2 / 1.0)


def test_ndcg_bad_input():
    with pytest.raises(FeatvlrError, match="relevance has shape"):
        ndcg(np.zeros((2, 3)), np.zeros((3, 2)), 5)
    with pytest.raises(FeatvlrError, match="NaN"):
        ndcg(np.array([[np.nan, 1.0]]), np.ones((1, 2)), 1)
    with pytest.raises(FeatvlrError, match="gain"):
        ndcg(np.zeros((1, 2)), np.ones((1, 2)), 1, gain="log")


# --------------------------------------------------------------------------------------
# composed recall


def naive_composed(sims, target, ks, reference=None, subsets=None, subset_ks=(1, 2, 3)):
    r_main, r_sub = [], []
    for q in range(sims.shape[0]):
        keep = np.ones(sims.shape[1], bool)
        if reference is not None:
            keep[reference[q]] = False
        idx = np.nonzero(keep)[0]
        r_main.append(naive_rank(sims[q, idx], idx == target[q]))
        if subsets is not None:
            mem = np.array([m for m in subsets[q] if m >= 0 and (reference is None or m != reference[q])])
            r_sub.append(naive_rank(sims[q, mem], mem == target[q]))
    out = {f"R@{k}": 100.0 * np.mean(np.array(r_main) < k) for k in ks}
    if subsets is not None:
        out.update({f"Rsubset@{k}": 100.0 * np.mean(np.array(r_sub) < k) for k in subset_ks})
    return out


def test_composed_toy_by_hand():
    sims = np.array([[0.9, 0.8, 0.1, 0.5],
                     [0.2, 0.9, 0.3, 0.95]], dtype=np.float32)
    target = np.array([1, 2])
    # without reference removal: ranks 1 and 2
    assert composed_recall(sims, target, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 50.0, "R@3": 100.0}
    # removing the references 0 and 3: ranks 0 and 1
    assert composed_recall(sims, target, ks=(1, 2), reference=[0, 3]) == {"R@1": 50.0, "R@2": 100.0}
    subsets = np.array([[0, 1, 2, -1], [3, 2, 1, 0]])
    m = composed_recall(sims, target, ks=(1,), reference=[0, 3], subsets=subsets, subset_ks=(1, 2))
    # query 1 members without reference 3: {2: 0.3, 1: 0.9, 0: 0.2} -> target 2 has rank 1
    assert m["Rsubset@1"] == 50.0 and m["Rsubset@2"] == 100.0


@pytest.mark.parametrize("seed", [0, 1])
def test_composed_matches_naive(seed):
    rng = np.random.default_rng(seed)
    q, g = 30, 40
    sims = np.round(rng.normal(size=(q, g)), 1).astype(np.float32)
    target = rng.integers(0, g, size=q)
    reference = (target + rng.integers(1, g, size=q)) % g
    subsets = np.stack([np.concatenate([[reference[i], target[i]],
                                        rng.choice(np.setdiff1d(np.arange(g), [reference[i], target[i]]), 4,
                                                   replace=False)]) for i in range(q)])
    subsets[0, 5] = -1
    for chunk in (1, 50, 10**9):
        got = composed_recall(sims, target, reference=reference, subsets=subsets, chunk_elements=chunk)
        assert_same(got, naive_composed(sims, target, (1, 5, 10, 50), reference, subsets))
    assert_same(composed_recall(sims, target, ks=(1, 10)), naive_composed(sims, target, (1, 10)))
