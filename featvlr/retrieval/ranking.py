"""Exact chunked drivers over a score source: ranks, ranks within a candidate list, top-k
(the tie rule: :mod:`featvlr.retrieval`)."""
from __future__ import annotations

from typing import Any

import torch

from featvlr.retrieval.score_sources import ScoreSource, iter_blocks
from featvlr.retrieval.tensors import _NEG_INF, DEFAULT_CHUNK_ELEMENTS, _check_range, _dedupe, _index_matrix, _row_count


def ranks(source: ScoreSource, positives: Any, *, exclude: Any = None,
          chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """0-based rank of each query's best positive, by counting (see the tie rule above).

    Args:
        source: the scores.
        positives: ``[Q]`` gallery index of each query's ground truth, or ``[Q, P]`` several
            (``-1`` pads; a query with none gets rank -1).
        exclude: ``[Q]`` or ``[Q, m]`` gallery indices removed from each query's gallery
            (``-1`` = none); an excluded item is never a positive.
        chunk_elements: most query x gallery scores held at once.

    Returns:
        ``[Q]`` int64 CPU tensor; ``n_gallery`` (beyond every K) where the best positive
        scores ``-inf`` (not retrieved, e.g. outside a shortlist).
    """
    dev = source.device
    G, Q = source.n_gallery, source.n_queries
    pos = _index_matrix(positives, Q, dev, "positives")
    exc = _index_matrix(exclude, Q, dev, "exclude")
    _check_range(pos, G, "positives")
    _check_range(exc, G, "exclude")
    pos = _dedupe(pos)
    if exc is not None:
        exc = _dedupe(exc)
        hit = (pos[:, :, None] == exc[:, None, :]) & (pos[:, :, None] >= 0)
        pos = pos.masked_fill(hit.any(-1), -1)
    out = torch.empty(Q, dtype=torch.long)
    for start, stop, block in iter_blocks(source, chunk_elements):
        p = pos[start:stop]
        pvalid = p >= 0
        psc = block.gather(1, p.clamp(min=0)).masked_fill(~pvalid, _NEG_INF)
        best = psc.max(dim=1, keepdim=True).values
        n = _row_count(block, best).to(dev)
        n -= ((psc >= best) & pvalid).sum(dim=1)
        if exc is not None:
            e = exc[start:stop]
            evalid = e >= 0
            n -= ((block.gather(1, e.clamp(min=0)) >= best) & evalid).sum(dim=1)
        n = torch.where(best[:, 0] == _NEG_INF, torch.full_like(n, G), n)  # not retrieved at all
        out[start:stop] = torch.where(pvalid.any(dim=1), n, torch.full_like(n, -1)).cpu()
    return out


def ranks_within(source: ScoreSource, targets: Any, candidates: Any, *, exclude: Any = None,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """0-based rank of each query's target among its own candidate list (CIRR's image set).

    ``candidates`` is ``[Q, m]`` gallery indices (``-1`` pads); the target and the excluded
    items do not count as competitors, ties are pessimistic. A query whose target is -1 gets
    rank -1. Returns a ``[Q]`` int64 CPU tensor.
    """
    dev = source.device
    Q, G = source.n_queries, source.n_gallery
    tgt = _index_matrix(targets, Q, dev, "targets")[:, :1]
    cand = _dedupe(_index_matrix(candidates, Q, dev, "candidates"))
    exc = _index_matrix(exclude, Q, dev, "exclude")
    _check_range(tgt, G, "targets")
    _check_range(cand, G, "candidates")
    _check_range(exc, G, "exclude")
    valid = (cand >= 0) & (cand != tgt)
    if exc is not None:
        valid &= ~((cand[:, :, None] == exc[:, None, :]) & (exc[:, None, :] >= 0)).any(-1)
    out = torch.empty(Q, dtype=torch.long)
    for start, stop, block in iter_blocks(source, chunk_elements):
        t = tgt[start:stop]
        ts = block.gather(1, t.clamp(min=0))
        cs = block.gather(1, cand[start:stop].clamp(min=0))
        n = ((cs >= ts) & valid[start:stop]).sum(dim=1)
        out[start:stop] = torch.where(t[:, 0] >= 0, n, torch.full_like(n, -1)).cpu()
    return out


def topk(source: ScoreSource, k: int, *, exclude: Any = None,
         chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` scores and gallery indices of every query (chunked ``torch.topk``).

    Excluded items (``[Q]`` or ``[Q, m]``, ``-1`` = none) are set to ``-inf`` first; where
    ``k`` reaches them (a gallery barely larger than ``k``) their slots hold index ``-1``.
    Returns CPU tensors ``values [Q, k]`` and ``indices [Q, k]`` (k capped at the gallery size).
    """
    dev = source.device
    Q, G = source.n_queries, source.n_gallery
    k = min(int(k), G)
    exc = _index_matrix(exclude, Q, dev, "exclude")
    _check_range(exc, G, "exclude")
    values = torch.empty((Q, k), dtype=torch.float32)
    indices = torch.empty((Q, k), dtype=torch.long)
    for start, stop, block in iter_blocks(source, chunk_elements):
        if exc is not None:
            mask = _exclusion_mask(tuple(block.shape), exc[start:stop], block.device)
            v, i = torch.topk(block.masked_fill(mask, _NEG_INF), k, dim=1)
            hit = mask.gather(1, i)  # only when k reaches into the excluded items
            i = i.masked_fill(hit, -1)
            v = v.masked_fill(hit, _NEG_INF)
        else:
            v, i = torch.topk(block, k, dim=1)
        values[start:stop] = v.float().cpu()
        indices[start:stop] = i.cpu()
    return values, indices


def _exclusion_mask(shape: tuple[int, int], exc: torch.Tensor, device: torch.device) -> torch.Tensor:
    q, g = shape
    mask = torch.zeros((q, g + 1), dtype=torch.bool, device=device)
    mask.scatter_(1, torch.where(exc >= 0, exc, torch.full_like(exc, g)), True)
    return mask[:, :g]
