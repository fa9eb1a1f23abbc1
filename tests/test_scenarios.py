"""Scenarios over a split: wiring of queries, galleries, relevance and self-exclusion."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from synthetic import write_tiny_cache

from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.scenarios import (
    EvalOptions,
    cirr_submission,
    evaluate_composed,
    evaluate_cross_modal,
    first_captions,
    parse_scenarios,
    write_cirr_submission,
)
from featvlr.methods.base import FeatureDims, Method
from featvlr.retrieval.metrics import composed_recall, cross_modal_recall
from featvlr.tasks import evaluate_method


def loop_ndcg(S: np.ndarray, REL: np.ndarray, exclude: list[list[int]], k: int, gain: str) -> float:
    """Mean NDCG@k, one query at a time: drop the excluded items, full sort."""
    vals = []
    for q in range(S.shape[0]):
        keep = np.setdiff1d(np.arange(S.shape[1]), exclude[q])
        s, r = S[q, keep].astype(np.float64), REL[q, keep].astype(np.float64)
        order = np.lexsort((r, -s))
        g = 2.0 ** r - 1 if gain == "exp" else r
        kk = min(k, len(r))
        disc = 1 / np.log2(np.arange(kk) + 2)
        idcg = (np.sort(g)[::-1][:kk] * disc).sum()
        vals.append((g[order][:kk] * disc).sum() / idcg if idcg > 0 else 0.0)
    return float(np.mean(vals))


def setup_data(seed=0, n_img=8, per=5, d=6):
    rng = np.random.default_rng(seed)
    img = rng.integers(-2, 3, size=(n_img, d)).astype(np.float32)
    txt = rng.integers(-2, 3, size=(n_img * per, d)).astype(np.float32)
    R = np.round(rng.random((n_img * per, n_img)), 2).astype(np.float32)
    return img, txt, R, np.arange(n_img * per) // per


def test_parse_scenarios():
    assert parse_scenarios("all") is None and parse_scenarios(None) is None
    assert parse_scenarios("t2i, i2t,t2i") == ["t2i", "i2t"]
    with pytest.raises(FeatvlrError, match="unknown scenario 'x2y'"):
        parse_scenarios("i2t,x2y")


def test_first_captions():
    assert first_captions(np.array([1, 1, 0, 2, 0, -1]), 4).tolist() == [2, 0, 3, -1]


def test_cross_modal_keys_and_folds_match_metrics_api():
    img, txt, _, t2i = setup_data(n_img=10)
    res = evaluate_cross_modal(torch.from_numpy(img), torch.from_numpy(txt), {"txt2img": t2i}, folds=(1, 5))
    sims = img @ txt.T
    full, five = cross_modal_recall(sims, t2i), cross_modal_recall(sims, t2i, folds=5)
    for d in ("i2t", "t2i"):
        for m in ("R@1", "R@5", "R@10", "medr", "meanr"):
            assert res[f"{d}/{m}"] == pytest.approx(full[f"{d}_{m}"])
            assert res[f"{d}_5fold/{m}"] == pytest.approx(five[f"{d}_{m}"])
    assert res["rsum"] == pytest.approx(full["rsum"]) and res["rsum_5fold"] == pytest.approx(five["rsum"])
    assert res["r_mean"] == pytest.approx(full["rsum"] / 6)
    only = evaluate_cross_modal(img, txt, None, ["t2i"])
    assert set(only) == {"t2i/R@1", "t2i/R@5", "t2i/R@10", "t2i/medr", "t2i/meanr"}


def test_uni_modal_and_mixed_match_loops():
    img, txt, R, t2i = setup_data()
    n, first = img.shape[0], np.arange(0, 40, 5)
    res = evaluate_cross_modal(img, txt, {"txt2img": t2i, "relevance": R}, ["i2i", "t2t", "i2it", "t2it"],
                               t2t_without_siblings=True, chunk_elements=17)
    caps_of = [list(range(5 * a, 5 * a + 5)) for a in range(n)]
    plans = {
        # name: (scores, relevance, excluded gallery items per query)
        "i2i": (img @ img.T, R[first, :], [[a] for a in range(n)]),
        "t2t": (txt[first] @ txt.T, R[:, :].T, [[first[a]] for a in range(n)]),
        "t2t_nosiblings": (txt[first] @ txt.T, R.T, caps_of),
        "i2it": (img @ np.concatenate([img, txt]).T, np.concatenate([R[first, :], R.T], axis=1),
                 [[a] for a in range(n)]),
        "t2it": (txt[first] @ np.concatenate([txt, img]).T, np.concatenate([R.T, R[first, :]], axis=1),
                 [[first[a]] for a in range(n)]),
    }
    for name, (S, REL, exc) in plans.items():
        for k in (10, 20, 50):
            assert res[f"{name}/ndcg_lin@{k}"] == pytest.approx(loop_ndcg(S, REL, exc, k, "linear"), abs=1e-12), name
        assert res[f"{name}/ndcg_exp@25"] == pytest.approx(loop_ndcg(S, REL, exc, 25, "exp"), abs=1e-12), name


def test_i2i_by_hand_self_removed():
    # image 0's neighbours: itself (removed), image 1 (0.8), image 2 (0)
    img = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    txt = img.copy()  # one caption per image
    R = np.eye(3, dtype=np.float32)
    R[0, 1], R[0, 2] = 0.2, 1.0  # rel(query 0, image b) = R[first(0)=0, b]
    res = evaluate_cross_modal(img, txt, {"txt2img": np.arange(3), "relevance": R}, ["i2i"], ndcg_ks=(1,),
                               ndcg_exp_k=1)
    q1 = 1.0 / 1.0  # image 1: image 0 (0.8) vs image 2 (0.6); R[1, 0] = 0 and R[1, 2] = 0 -> IDCG 0 -> 0
    q0 = 0.2 / 1.0
    q2 = 0.0  # R[2, 0] = R[2, 1] = 0
    assert res["i2i/ndcg_lin@1"] == pytest.approx((q0 + 0.0 + q2) / 3)
    del q1


def test_relevance_errors():
    img, txt, R, t2i = setup_data()
    with pytest.raises(FeatvlrError, match="needs a relevance matrix"):
        evaluate_cross_modal(img, txt, {"txt2img": t2i}, ["i2i"])
    with pytest.raises(FeatvlrError, match="relevance matrix has shape"):
        evaluate_cross_modal(img, txt, {"txt2img": t2i, "relevance": R.T}, ["t2t"])
    with pytest.raises(FeatvlrError, match="NaN"):
        evaluate_cross_modal(np.full_like(img, np.nan), txt, None)
    with pytest.raises(FeatvlrError, match="composed"):
        evaluate_cross_modal(img, txt, None, ["composed"])


def test_teran_ndcg_directions():
    img, txt, R, t2i = setup_data(n_img=10)
    res = evaluate_cross_modal(img, txt, {"txt2img": t2i, "relevance": R}, teran_ndcg=True)
    S = img @ txt.T
    # i2t: query image i, gallery captions, rel = R[:, i]; t2i: query caption q, rel = R[q, :]
    assert res["i2t/ndcg_exp@25"] == pytest.approx(loop_ndcg(S, R.T, [[]] * 10, 25, "exp"))
    assert res["t2i/ndcg_exp@25"] == pytest.approx(loop_ndcg(S.T, R, [[]] * 50, 25, "exp"))
    assert res["i2t/ndcg_exp@25_nonzero"] >= res["i2t/ndcg_exp@25"]


def test_score_fn_and_shortlist_paths():
    img, txt, R, t2i = setup_data(n_img=10)
    it, tt = torch.from_numpy(img), torch.from_numpy(txt)
    local_i, local_t = it.flip(1), tt.flip(1)  # a different "local" score

    def score_fn(i_rows, t_rows):
        return local_i[i_rows] @ local_t[t_rows].t()

    dense = evaluate_cross_modal(local_i, local_t, {"txt2img": t2i}, folds=(1, 5))
    pair = evaluate_cross_modal(None, None, {"txt2img": t2i, "relevance": R}, folds=(1, 5), score_fn=score_fn)
    assert pair == pytest.approx(dense)
    # a shortlist covering the whole gallery re-ranks everything: the local result
    full_sl = evaluate_cross_modal(it, tt, {"txt2img": t2i}, score_fn=score_fn, shortlist=(50, 10))
    assert full_sl == pytest.approx(evaluate_cross_modal(local_i, local_t, {"txt2img": t2i}))
    # a ground truth outside a shortlist of 2 is a miss at every K: R@K <= the global R@2
    # (continuous global scores: shortlist membership among tied scores follows torch.topk)
    gi, gt = it + 0.01 * torch.randn(it.shape), tt + 0.01 * torch.randn(tt.shape)
    short = evaluate_cross_modal(gi, gt, {"txt2img": t2i}, score_fn=score_fn, shortlist=2)
    glob = evaluate_cross_modal(gi, gt, {"txt2img": t2i}, ks=(2,))
    for d in ("i2t", "t2i"):
        assert short[f"{d}/R@10"] <= glob[f"{d}/R@2"] + 1e-9
    with pytest.raises(FeatvlrError, match="needs embeddings"):
        evaluate_cross_modal(None, None, {"txt2img": t2i, "relevance": R}, ["i2i"], score_fn=score_fn)


def test_sims_input_equals_embeddings():
    img, txt, R, t2i = setup_data(n_img=10)
    a = evaluate_cross_modal(img, txt, {"txt2img": t2i, "relevance": R}, ["i2t", "t2i"], (1, 5), teran_ndcg=True)
    b = evaluate_cross_modal(None, None, {"txt2img": t2i, "relevance": R}, ["i2t", "t2i"], (1, 5), teran_ndcg=True,
                             sims=img @ txt.T)
    assert a == pytest.approx(b)


def test_faiss_backend_flat_recall():
    rng = np.random.default_rng(5)
    img = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(20, 16)).astype(np.float32)), dim=1)
    txt = torch.nn.functional.normalize(img.repeat_interleave(5, 0) + 0.3 * torch.randn(100, 16), dim=1)
    exact = evaluate_cross_modal(img, txt, None)
    flat = evaluate_cross_modal(img, txt, None, backend="faiss-flat", faiss_k=20)
    for key in ("i2t/R@1", "i2t/R@5", "t2i/R@10", "rsum"):
        assert flat[key] == pytest.approx(exact[key])
    assert "i2t/medr" not in flat


# --------------------------------------------------------------------------------------
# composed


def composed_arrays(seed=0, q=25, g=30):
    rng = np.random.default_rng(seed)
    qe = torch.from_numpy(rng.integers(-2, 3, size=(q, 5)).astype(np.float32))
    ge = torch.from_numpy(rng.integers(-2, 3, size=(g, 5)).astype(np.float32))
    target = rng.integers(0, g, size=q)
    reference = (target + 1) % g
    subsets = np.stack([np.concatenate([[reference[i], target[i]], (target[i] + np.arange(2, 6)) % g])
                        for i in range(q)])
    return qe, ge, target, reference, subsets


def test_composed_cirr_shoes_fashioniq():
    qe, ge, target, reference, subsets = composed_arrays()
    sims = (qe @ ge.t()).numpy()
    cirr = evaluate_composed(qe, ge, {"target": target, "reference": reference, "subsets": subsets})
    ref = composed_recall(sims, target, reference=reference, subsets=subsets)
    for k, v in ref.items():
        assert cirr[f"composed/{k}"] == pytest.approx(v)
    assert cirr["composed/recall_avg"] == pytest.approx((ref["R@5"] + ref["Rsubset@1"]) / 2)
    shoes = evaluate_composed(qe, ge, {"target": target, "reference": reference})
    ref = composed_recall(sims, target, ks=(1, 10, 50), reference=reference)
    assert shoes["composed/R@10"] == pytest.approx(ref["R@10"])
    assert shoes["composed/recall_mean"] == pytest.approx(np.mean(list(ref.values())))
    cats = np.array(["dress", "shirt"] * 12 + ["dress"])
    fiq = evaluate_composed(qe, ge, {"target": target, "reference": reference, "category": cats})
    ref = composed_recall(sims, target, ks=(10, 50))  # reference kept
    assert fiq["composed/R@10"] == pytest.approx(ref["R@10"])
    dress = np.nonzero(cats == "dress")[0]
    assert fiq["composed/dress_R@50"] == pytest.approx(composed_recall(sims[dress], target[dress], ks=(50,))["R@50"])
    # test split: no targets -> no metrics
    assert evaluate_composed(qe, ge, {"target": np.full(25, -1), "reference": reference, "subsets": subsets}) == {}


def test_cirr_submission(tmp_path):
    qe, ge, _, reference, subsets = composed_arrays(q=4, g=60)
    names = [f"img{i}" for i in range(60)]
    comp = {"target": np.full(4, -1), "reference": reference, "subsets": subsets, "pair_ids": np.array([7, 8, 9, 10])}
    recall, subset = cirr_submission(qe, ge, comp, names)
    assert recall["version"] == "rc2" and recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    sims = (qe @ ge.t()).numpy()
    for i, pid in enumerate(["7", "8", "9", "10"]):
        assert len(recall[pid]) == 50 and names[reference[i]] not in recall[pid]
        assert len(subset[pid]) == 3 and names[reference[i]] not in subset[pid]
        members = [m for m in subsets[i] if m != reference[i]]
        assert set(subset[pid]) <= {names[m] for m in members}
        best = sorted(members, key=lambda m: -sims[i, m])[:3]
        assert sorted(sims[i, [names.index(n) for n in subset[pid]]]) == pytest.approx(sorted(sims[i, best]))
        s = sims[i].copy()
        s[reference[i]] = -np.inf
        assert sims[i, names.index(recall[pid][0])] == pytest.approx(s.max())
    p1, p2 = write_cirr_submission(tmp_path, recall, subset, name="test1")
    assert json.loads(p1.read_text())["7"] == recall["7"] and p2.name == "recall_subset_submission_test1.json"


def test_cirr_submission_small_gallery_never_lists_the_reference():
    qe, ge, _, reference, subsets = composed_arrays(q=4, g=30)
    names = [f"img{i}" for i in range(30)]
    comp = {"target": np.full(4, -1), "reference": reference, "subsets": subsets, "pair_ids": np.arange(4)}
    recall, _ = cirr_submission(qe, ge, comp, names)
    for i in range(4):
        assert len(recall[str(i)]) == 29 and names[reference[i]] not in recall[str(i)]


# --------------------------------------------------------------------------------------
# methods over a cache split


class MeanMethod(Method):
    """Mean-pooled regions / tokens; pairwise variant scores the same means by ``score``."""

    task = "cross_modal"

    def __init__(self, pairwise=False):
        super().__init__(None, None, FeatureDims())
        self.pairwise = pairwise
        self.w = torch.nn.Linear(1, 1)

    def _mean(self, x, m):
        return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)

    def encode_images(self, b):
        if self.pairwise:
            return {"tokens": b["regions"], "mask": b["region_mask"]}
        return self._mean(b["regions"], b["region_mask"])

    def encode_texts(self, b):
        if self.pairwise:
            return {"tokens": b["tokens"], "mask": b["token_mask"]}
        return self._mean(b["tokens"], b["token_mask"])

    def score(self, images, texts):
        return self._mean(images["tokens"], images["mask"]) @ self._mean(texts["tokens"], texts["mask"]).t()


class PlanMethod(MeanMethod):
    """Declares a global shortlist covering the whole gallery, re-ranked by ``score``."""

    def shortlist_plan(self, images, texts):
        g_i, g_t = self._mean(images["tokens"], images["mask"]), self._mean(texts["tokens"], texts["mask"])

        def rerank(q, cand, queries="images"):
            out = []
            for i in range(len(q)):
                if queries == "images":
                    out.append(self.score({k: v[q[i:i + 1]] for k, v in images.items()},
                                          {k: v[cand[i]] for k, v in texts.items()}))
                else:
                    out.append(self.score({k: v[cand[i]] for k, v in images.items()},
                                          {k: v[q[i:i + 1]] for k, v in texts.items()}).t())
            return torch.cat(out)

        return {"images": g_i.flip(1), "texts": g_t.flip(1), "shortlist": (len(g_t), len(g_i)), "rerank_fn": rerank}


def test_evaluate_method_paths(tmp_path):
    split = FeatureStore(write_tiny_cache(tmp_path / "c.h5", n_img=10)).split("test")
    curves: dict = {}
    dense = evaluate_method(MeanMethod(), split, EvalOptions(folds=(1, 5), batch_size=3), "all", curves=curves)
    assert {"i2t", "t2i", "i2t_5fold", "t2i_5fold"} <= set(curves) and len(curves["i2t"]) == 50
    assert {"i2i/ndcg_lin@10", "t2it/ndcg_exp@25", "i2t/ndcg_exp@25", "rsum_5fold"} <= set(dense)
    pair = evaluate_method(MeanMethod(pairwise=True), split, EvalOptions(folds=(1, 5), batch_size=4), None)
    cross = {k: v for k, v in dense.items() if k.split("/")[0] in ("i2t", "t2i", "i2t_5fold", "t2i_5fold")
             or "/" not in k}
    assert pair == pytest.approx(cross, abs=1e-9)
    plan = evaluate_method(PlanMethod(pairwise=True), split, EvalOptions(batch_size=4), None)
    assert plan["rsum"] == pytest.approx(dense["rsum"]) and plan["i2t/meanr"] == pytest.approx(dense["i2t/meanr"])
    with pytest.raises(FeatvlrError, match="needs embeddings"):
        evaluate_method(MeanMethod(pairwise=True), split, EvalOptions(), "i2i")


def test_r_mean_matches_definition():
    img, txt, _, _ = setup_data(n_img=10)
    res = evaluate_cross_modal(img, txt, None)
    i2t = np.mean([res[f"i2t/R@{k}"] for k in (1, 5, 10)])
    t2i_ = np.mean([res[f"t2i/R@{k}"] for k in (1, 5, 10)])
    assert res["r_mean"] == pytest.approx((i2t + t2i_) / 2)
    assert math.isfinite(res["i2t/meanr"])


# --------------------------------------------------------------------------------------
# composed methods over a cache split


class SumComposer(Method):
    """Query = reference global feature + modifier text vector; gallery = global feature."""

    task = "composed"
    pairwise = False

    def __init__(self):
        super().__init__(None, None, FeatureDims())
        self.w = torch.nn.Linear(1, 1)

    def encode_queries(self, b):
        return b["reference_image"] + b["pooled_text"]

    def encode_images(self, b):
        return b["global_image"]


def composed_store(path, with_targets=True, n_img=12, q=9, d=5, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, n_img, size=q)
    tgt = (ref + rng.integers(1, n_img, size=q)) % n_img
    subsets = np.stack([np.concatenate([[ref[i], tgt[i]], (tgt[i] + np.arange(1, 5)) % n_img]) for i in range(q)])
    subsets = np.where(subsets == ref[:, None], -1, subsets)
    subsets[:, 0] = ref
    with CacheWriter(path) as w:
        w.write("images/val/global", rng.integers(-2, 3, size=(n_img, d)).astype(np.float32))
        w.write("images/val/ids", [f"im{i}" for i in range(n_img)])
        w.write("texts/val/pooled", rng.integers(-2, 3, size=(q, d)).astype(np.float32))
        w.write("texts/val/offsets", np.zeros(q + 1, dtype=np.int64))
        w.write("texts/val/image_index", np.full(q, -1, dtype=np.int64))
        w.write("composed/val/reference", ref)
        w.write("composed/val/target", tgt if with_targets else np.full(q, -1))
        w.write("composed/val/subsets", subsets)
        w.write("composed/val/pair_ids", np.arange(100, 100 + q))
    return FeatureStore(path).split("val"), ref, tgt, subsets


def test_evaluate_method_composed(tmp_path):
    split, ref, tgt, subsets = composed_store(tmp_path / "cirr.h5")
    res = evaluate_method(SumComposer(), split, EvalOptions(batch_size=4), ["composed"])
    g = split.global_features()
    q = g[ref] + split.pooled()
    expect = composed_recall(q @ g.T, tgt, reference=ref, subsets=subsets)
    for k, v in expect.items():
        assert res[f"composed/{k}"] == pytest.approx(v)
    test_split, test_ref, _, _ = composed_store(tmp_path / "cirr_test.h5", with_targets=False)
    sub = tmp_path / "sub"
    assert evaluate_method(SumComposer(), test_split, EvalOptions(), ["composed"], submission_dir=sub) == {}
    recall = json.loads((sub / "recall_submission_val.json").read_text())
    assert recall["metric"] == "recall" and len(recall) == 2 + 9 and len(recall["100"]) == 11
    assert f"im{test_ref[0]}" not in recall["100"]
    with pytest.raises(FeatvlrError, match="only the composed scenario"):
        evaluate_method(SumComposer(), split, EvalOptions(), ["i2t"])


def test_average_fashioniq():
    from featvlr.evaluation.scenarios import average_fashioniq

    per = {"dress": {"composed/R@10": 20.0, "composed/R@50": 40.0},
           "shirt": {"composed/R@10": 30.0, "composed/R@50": 50.0}}
    out = average_fashioniq(per)
    assert out["composed/dress_R@10"] == 20.0 and out["composed/shirt_R@50"] == 50.0
    assert out["composed/R@10"] == 25.0 and out["composed/R@50"] == 45.0
    assert out["composed/average_recall"] == 35.0
