"""Exact chunked NDCG@k over a score source, ties ordered pessimistically (by relevance ascending)."""
from __future__ import annotations

from typing import Any

import torch

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval.ranking import _exclusion_mask
from featvlr.retrieval.score_sources import ScoreSource, iter_blocks
from featvlr.retrieval.tensors import (
    _NEG_INF,
    DEFAULT_CHUNK_ELEMENTS,
    _check_range,
    _float,
    _index_matrix,
    _row_count,
    as_tensor,
)


def _gains(rel: torch.Tensor, gain: str) -> torch.Tensor:
    rel = rel.double()
    g = torch.pow(2.0, rel) - 1.0 if gain == "exp" else rel
    return torch.where(torch.isfinite(rel), g, torch.zeros_like(g))


def ndcg_scores(source: ScoreSource, relevance: Any, k: int, *, gain: str = "exp", exclude: Any = None,
                chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Per-query NDCG@k as fractions (float64 CPU tensor ``[Q]``).

    Args:
        source: the scores.
        relevance: ``[Q, G]`` graded relevance (array/tensor, rows aligned with the source), or
            a callable ``(start, stop) -> Tensor [stop - start, G]``.
        k: cut-off.
        gain: ``"exp"`` (``2^rel - 1``, TERAN) or ``"linear"`` (``rel``, CoVLR/RVLR).
        exclude: ``[Q]`` or ``[Q, m]`` gallery indices removed from each query's ranking and
            from its ideal ranking (``-1`` = none).

    DCG@k = sum_{r<k} gain(rel_r) / log2(r + 2) over the list ordered by score descending,
    ties by relevance ascending; IDCG from the query's own relevance row, sorted; NDCG is 0
    where IDCG is 0.
    """
    return ndcg_multi(source, relevance, [(k, gain)], exclude=exclude, chunk_elements=chunk_elements)[(k, gain)]


def ndcg_multi(source: ScoreSource, relevance: Any, specs: list[tuple[int, str]], *, exclude: Any = None,
               chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[tuple[int, str], torch.Tensor]:
    """:func:`ndcg_scores` for several ``(k, gain)`` pairs in one pass over the scores."""
    specs = list(dict.fromkeys((int(k), g) for k, g in specs))
    for k, g in specs:
        if g not in ("exp", "linear"):
            raise FeatvlrError(f"gain must be 'exp' or 'linear', got {g!r}")
        if k < 1:
            raise FeatvlrError(f"NDCG cut-off must be positive, got {k}")
    dev = source.device
    Q, G = source.n_queries, source.n_gallery
    exc = _index_matrix(exclude, Q, dev, "exclude")
    _check_range(exc, G, "exclude")
    if callable(relevance):
        rel_block = relevance
    else:
        rel_t = as_tensor(relevance)
        if tuple(rel_t.shape) != (Q, G):
            raise FeatvlrError(f"relevance has shape {tuple(rel_t.shape)}, expected {(Q, G)} (queries x gallery)")

        def rel_block(a: int, b: int) -> torch.Tensor:
            return rel_t[a:b]
    kmax = min(max(k for k, _ in specs), G)
    disc = 1.0 / torch.log2(torch.arange(kmax, device=dev, dtype=torch.float64) + 2.0)
    out = {spec: torch.empty(Q, dtype=torch.float64) for spec in specs}
    for start, stop, block in iter_blocks(source, chunk_elements):
        rel = _float(as_tensor(rel_block(start, stop)).to(dev))
        if tuple(rel.shape) != tuple(block.shape):
            raise FeatvlrError(f"relevance block has shape {tuple(rel.shape)}, expected {tuple(block.shape)}")
        if not torch.isfinite(rel).all():
            raise FeatvlrError("the relevance contains NaN or infinite values")
        rel_order, rel_ideal = rel, rel
        if exc is not None:
            mask = _exclusion_mask(tuple(block.shape), exc[start:stop], dev)
            block = block.masked_fill(mask, _NEG_INF)
            rel_order = rel.masked_fill(mask, float("inf"))  # last among tied -inf scores, gain 0
            rel_ideal = rel.masked_fill(mask, _NEG_INF)
        vals_all, idx_all = torch.topk(block, kmax, dim=1)
        r_all = rel_order.gather(1, idx_all)
        ideal_all = torch.topk(rel_ideal, kmax, dim=1).values
        for k, gain in specs:
            kk = min(k, G)
            dcg = _dcg_at(block, rel_order, vals_all[:, :kk], r_all[:, :kk].clone(), gain, disc[:kk])
            idcg = (_gains(ideal_all[:, :kk], gain) * disc[:kk]).sum(dim=1)
            safe = torch.where(idcg > 0, idcg, torch.ones_like(idcg))
            out[(k, gain)][start:stop] = torch.where(idcg > 0, dcg / safe, torch.zeros_like(dcg)).cpu()
    return out


def _dcg_at(block: torch.Tensor, rel_order: torch.Tensor, vals: torch.Tensor, r: torch.Tensor, gain: str,
            disc: torch.Tensor) -> torch.Tensor:
    """DCG of the top ``vals.shape[1]`` list with pessimistic tie order (see :func:`ndcg_scores`)."""
    kk = vals.shape[1]
    dev = block.device
    vk = vals[:, -1:]
    n_tied_in = (vals == vk).sum(dim=1)
    n_tied_all = _row_count(block, vk, "eq").to(dev)
    cross = torch.nonzero(n_tied_all > n_tied_in).flatten()
    if len(cross):
        # ties straddle the cut-off: the tied slots take the lowest relevances of the whole tie
        tied = block[cross] == vk[cross]
        low = rel_order[cross].masked_fill(~tied, float("inf")).sort(dim=1).values[:, :kk]
        first = (kk - n_tied_in[cross])[:, None]
        slot = torch.arange(kk, device=dev)[None, :]
        repl = low.gather(1, (slot - first).clamp(min=0))
        r[cross] = torch.where(slot >= first, repl, r[cross])
    # order: score descending, equal scores by relevance ascending (two stable sorts)
    o1 = torch.sort(r, dim=1, stable=True).indices
    r, vals = r.gather(1, o1), vals.gather(1, o1)
    o2 = torch.sort(vals, dim=1, descending=True, stable=True).indices
    r = r.gather(1, o2)
    return (_gains(r, gain) * disc).sum(dim=1)
