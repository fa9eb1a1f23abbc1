"""Chunked ranking engines: score sources agree with each other and with a full sort."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import write_tiny_cache

from featvlr.cache.store import FeatureStore
from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.embed import concat_outputs, embed_split
from featvlr.retrieval import (
    DenseScores,
    EmbeddingScores,
    PairwiseScores,
    ShortlistRerankScores,
    faiss_search,
    group_positives,
    ranks,
    ranks_from_topk,
    rerank_from_score_fn,
    rows_per_block,
    topk,
)


def int_embeddings(rng, n, d=8):
    """Small-integer vectors: every dot product is exact in float32, whatever the blocking."""
    return torch.from_numpy(rng.integers(-2, 3, size=(n, d)).astype(np.float32))


def naive_ranks(sims: np.ndarray, positives: list[set[int]], exclude: list[set[int]] | None = None) -> np.ndarray:
    out = []
    for q in range(sims.shape[0]):
        keep = np.array([g not in (exclude[q] if exclude else set()) for g in range(sims.shape[1])])
        idx = np.nonzero(keep)[0]
        pos = np.array([g in positives[q] for g in idx])
        if not pos.any():
            out.append(-1)
            continue
        order = np.lexsort((pos.astype(int), -sims[q, idx]))
        out.append(int(np.nonzero(pos[order])[0][0]))
    return np.array(out)


def test_group_positives_and_rows_per_block():
    pos = group_positives(np.array([1, 0, 1, -1, 1]), 3)
    assert pos.tolist() == [[1, -1, -1], [0, 2, 4], [-1, -1, -1]]
    assert rows_per_block(1000, 50_000) == 50
    assert rows_per_block(10**9, 5) == 1
    with pytest.raises(FeatvlrError):
        rows_per_block(10, 0)


def test_sources_agree_and_match_full_sort():
    rng = np.random.default_rng(0)
    img, txt = int_embeddings(rng, 12), int_embeddings(rng, 60)
    sims = (img @ txt.t()).numpy()
    t2i = np.arange(60) // 5
    pos_i2t = group_positives(t2i, 12)
    expect_i2t = naive_ranks(sims, [set(np.nonzero(t2i == i)[0]) for i in range(12)])
    expect_t2i = naive_ranks(sims.T, [{int(t2i[c])} for c in range(60)])

    def score_fn(i_rows, t_rows):
        return img[i_rows] @ txt[t_rows].t()

    i2t_sources = [DenseScores(sims), EmbeddingScores(img, txt),
                   PairwiseScores(score_fn, 12, 60, queries="images", gallery_chunk=7)]
    t2i_sources = [DenseScores(sims, by="cols"), DenseScores(sims.T), EmbeddingScores(txt, img),
                   PairwiseScores(score_fn, 12, 60, queries="texts", gallery_chunk=5)]
    for chunk in (1, 59, 10**6):
        for src in i2t_sources:
            assert ranks(src, pos_i2t, chunk_elements=chunk).tolist() == expect_i2t.tolist()
        for src in t2i_sources:
            assert ranks(src, torch.as_tensor(t2i), chunk_elements=chunk).tolist() == expect_t2i.tolist()


def test_dense_subsets_and_exclusion():
    rng = np.random.default_rng(1)
    sims = np.round(rng.normal(size=(20, 30)), 1).astype(np.float32)
    qi, gi = np.array([3, 5, 7, 11]), np.arange(10, 25)
    src = DenseScores(sims, query_index=qi, gallery_index=gi)
    sub = sims[qi][:, gi]
    targets = np.array([0, 4, 14, 2])
    excl = np.array([[1, 2], [-1, -1], [0, 14], [5, -1]])  # query 2 excludes its own target
    got = ranks(src, targets, exclude=excl, chunk_elements=7)
    ref = naive_ranks(sub, [{t} for t in targets], [set(e[e >= 0]) for e in excl])
    assert got.tolist() == ref.tolist()
    assert got[2] == -1  # an excluded positive is not a positive


def test_topk_with_exclusion():
    sims = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    vals, idx = topk(DenseScores(sims), 2, exclude=[1, -1], chunk_elements=4)
    assert idx.tolist() == [[3, 2], [2, 0]]
    assert vals[0].tolist() == pytest.approx([0.7, 0.5])
    assert topk(DenseScores(sims), 10)[1].shape == (2, 4)
    # k reaching the excluded item: its slot holds -1
    assert topk(DenseScores(sims), 10, exclude=[1, -1])[1].tolist() == [[3, 2, 0, -1], [2, 0, 1, 3]]


def test_shortlist_miss_is_last_rank_not_rank_zero():
    # global scores put the ground truth (item 3) outside a shortlist of 2
    glob = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0]])
    def rerank(q, cand):
        return torch.tensor([[5.0, 6.0]])

    src = ShortlistRerankScores(DenseScores(glob), rerank, 2)
    assert ranks(src, [3]).item() == 5  # the gallery size: a miss for every K
    # a ground truth inside the shortlist is ranked by the re-rank scores
    assert ranks(src, [0]).item() == 1 and ranks(src, [1]).item() == 0


def test_shortlist_rerank_equals_full_rerank_when_shortlist_covers_gallery():
    rng = np.random.default_rng(2)
    img, txt = int_embeddings(rng, 6), int_embeddings(rng, 30)
    loc_i, loc_t = int_embeddings(rng, 6), int_embeddings(rng, 30)

    def local(i_rows, t_rows):
        return loc_i[i_rows] @ loc_t[t_rows].t()

    pos = group_positives(np.arange(30) // 5, 6)
    full = ranks(PairwiseScores(local, 6, 30), pos)
    sl = ShortlistRerankScores(EmbeddingScores(img, txt), rerank_from_score_fn(local, queries="images"), 30)
    assert ranks(sl, pos, chunk_elements=31).tolist() == full.tolist()
    # t2i direction through the adapter
    full_t = ranks(PairwiseScores(local, 6, 30, queries="texts"), torch.arange(30) // 5)
    sl_t = ShortlistRerankScores(EmbeddingScores(txt, img), rerank_from_score_fn(local, queries="texts"), 6)
    assert ranks(sl_t, torch.arange(30) // 5).tolist() == full_t.tolist()


def test_nan_scores_rejected():
    with pytest.raises(FeatvlrError, match="NaN"):
        ranks(DenseScores(torch.tensor([[0.1, float("nan")]])), [0])


def test_faiss_flat_matches_exact_and_ranks_from_topk():
    rng = np.random.default_rng(3)
    q = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(50, 16)).astype(np.float32)), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(400, 16)).astype(np.float32)), dim=1)
    _, ids = faiss_search(q, g, 10, index="flat")
    _, exact = topk(EmbeddingScores(q, g), 10)
    assert (ids == exact.numpy()).mean() > 0.99  # float rounding may swap near-ties
    targets = exact[:, 3]
    r = ranks_from_topk(exact, targets)
    assert r.tolist() == [3] * 50
    r = ranks_from_topk(exact[:, :2], targets)
    assert r.tolist() == [2] * 50  # not in the list: rank = list length, a miss for R@K, K <= 2
    for index in ("ivf", "hnsw"):
        _, approx = faiss_search(q, g, 10, index=index, nlist=8, nprobe=8)
        assert approx.shape == (50, 10)
    with pytest.raises(FeatvlrError, match="unknown FAISS index"):
        faiss_search(q, g, 5, index="lsh")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    img, txt = int_embeddings(rng, 30), int_embeddings(rng, 150)
    pos = group_positives(np.arange(150) // 5, 30)
    cpu = ranks(EmbeddingScores(img, txt), pos, chunk_elements=100)
    gpu = ranks(EmbeddingScores(img.cuda(), txt.cuda()), pos.cuda(), chunk_elements=100)
    assert cpu.tolist() == gpu.tolist()


# --------------------------------------------------------------------------------------
# embedding a split


class FakeMethod(torch.nn.Module):
    """Mean of regions / tokens (a token-level variant returns padded dicts)."""

    pairwise = False
    task = "cross_modal"

    def __init__(self, pairwise: bool = False):
        super().__init__()
        self.pairwise = pairwise
        self.lin = torch.nn.Linear(4, 4)

    def encode_images(self, batch):
        assert not self.training
        v = batch["regions"].sum(1) / batch["region_mask"].sum(1, keepdim=True)
        return {"tokens": batch["regions"], "mask": batch["region_mask"]} if self.pairwise else v

    def encode_texts(self, batch):
        if self.pairwise:
            return {"tokens": batch["tokens"], "mask": batch["token_mask"]}
        return batch["pooled_text"]


def test_embed_split_order_and_eval_mode(tmp_path):
    store = FeatureStore(write_tiny_cache(tmp_path / "tiny.h5"))
    split = store.split("test")
    method = FakeMethod().train()
    img, txt = embed_split(method, split, batch_size=4)
    assert method.training  # restored
    assert img.shape == (6, 4) and txt.shape == (30, 4)
    np.testing.assert_allclose(txt.numpy(), split.pooled(), rtol=1e-6)
    np.testing.assert_allclose(img.numpy(), split.regions(slice(None)).mean(1), rtol=1e-5, atol=1e-6)
    _, txt_d = embed_split(FakeMethod(pairwise=True), split, batch_size=7)
    assert isinstance(txt_d, dict) and txt_d["tokens"].shape[0] == 30
    assert txt_d["mask"].dtype == torch.bool and txt_d["tokens"].shape[1] == split.token_lengths().max()


def test_concat_outputs_pads():
    a = {"t": torch.ones(2, 3, 4), "m": torch.ones(2, 3, dtype=torch.bool)}
    b = {"t": torch.ones(1, 5, 4), "m": torch.ones(1, 5, dtype=torch.bool)}
    out = concat_outputs([a, b])
    assert out["t"].shape == (3, 5, 4) and out["m"][:2, 3:].sum() == 0
