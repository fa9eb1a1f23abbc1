"""Exact chunked scoring and ranking, embedding of a split, and a FAISS backend.

Everything here works on a *score source*: an object that hands out the scores of a range
of queries against the whole gallery, one block at a time. Sources exist for a full
similarity matrix (:class:`DenseScores`, queries along rows or columns), for query and
gallery embeddings scored by dot product (:class:`EmbeddingScores`), for a pairwise score
function of token-level methods (:class:`PairwiseScores`) and for "global shortlist, then
re-rank" (:class:`ShortlistRerankScores`). The drivers (:func:`ranks`, :func:`topk`,
:func:`ndcg_scores`, :func:`ranks_within`) take as many query rows per block as fit in
``chunk_elements`` scores, so no more than that many query x gallery scores are held at once
beyond the input itself, and they are vectorised over the queries of a block (torch; on CUDA
when the source's tensors are there). Besides a block of scores (a view, not a copy, for a
full matrix) a driver holds boolean masks and, for NDCG, relevance of the same block shape,
so its peak memory is a small multiple of ``chunk_elements`` bytes on top of one block.

Tie rule (all exact drivers). The 0-based rank of a query is the number of non-positive,
non-excluded gallery items that score **at least** as high as the query's best positive::

    rank(q) = #{ g : g not positive for q, g not excluded for q, s(q, g) >= max_{p in P(q)} s(q, p) }

that is, ties are broken pessimistically (against the ground truth), and with several
positives (i2t: the 5 captions of an image) the rank is that of the best one. This is the
position of the first positive in a descending sort that places, among equal scores,
non-positives before positives. For NDCG the ranked list is ordered by score, descending,
and among equal scores by relevance, ascending (again pessimistic); this holds also for
ties that straddle the cut-off K. NaN scores are rejected. Top-k lists (:func:`topk`,
FAISS) keep ``torch.topk``'s order among equal scores.

A query with no positive in its gallery gets rank ``-1`` (the metric functions drop it).
A ground truth scoring ``-inf`` counts as not retrieved: its rank is the gallery size,
beyond every K (and it enters medr/meanr at that value). In
:class:`ShortlistRerankScores` every item outside the shortlist scores ``-inf``, so a
ground truth outside the shortlist is a miss at every K. (The TGDT/GLS reference code
counts such a ground truth as rank 0, a hit at R@1, which inflates its two-stage numbers.)

FAISS backend (:func:`faiss_search`, flat inner product, IVF or HNSW) for galleries beyond
exact search: it returns top-k lists only, so :func:`ranks_from_topk` gives rank ``k`` to a
ground truth not in the list: R@K is exact up to the index's own recall for K <= k, and
medr/meanr are not defined.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from featvlr.errors import FeatvlrError

DEFAULT_CHUNK_ELEMENTS = 50_000_000
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------
# inputs


def as_tensor(x: Any, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A torch view of ``x`` (numpy arrays, memmaps and lists are wrapped without a copy
    where possible); tensors stay on their device unless ``device`` is given."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise FeatvlrError(f"expected a numeric array, got an object array of shape {arr.shape}")
        if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous and not arr.flags.f_contiguous:
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
        with warnings.catch_warnings():  # read-only memmaps: we never write through the view
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


def as_index(x: Any, *, device: torch.device | None = None) -> torch.Tensor | None:
    """Long tensor of indices (``None`` passes through)."""
    if x is None:
        return None
    return as_tensor(x).to(dtype=torch.long, device=device)


def _float(block: torch.Tensor) -> torch.Tensor:
    return block if block.dtype in (torch.float32, torch.float64) else block.float()


def rows_per_block(n_gallery: int, chunk_elements: int) -> int:
    """How many query rows of ``n_gallery`` scores fit in ``chunk_elements``."""
    if chunk_elements < 1:
        raise FeatvlrError(f"chunk_elements must be positive, got {chunk_elements}")
    return max(1, int(chunk_elements) // max(1, int(n_gallery)))


# --------------------------------------------------------------------------------------
# score sources


class ScoreSource:
    """Scores of ``n_queries`` queries against ``n_gallery`` items, by blocks of query rows.

    ``block(start, stop)`` returns a float ``[stop - start, n_gallery]`` tensor on
    ``self.device``. Positions are 0-based in the source's own numbering; ``query_ids`` and
    ``gallery_ids`` (when not None) map them to rows of the underlying data.
    ``check_blocks``: whether the drivers screen every block for NaN (False where the
    inputs were checked once up front).
    """

    n_queries: int
    n_gallery: int
    device: torch.device
    check_blocks: bool = True

    def block(self, start: int, stop: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class DenseScores(ScoreSource):
    """A precomputed similarity matrix.

    Args:
        sims: ``[A, B]`` scores (numpy array, memmap or tensor; not copied).
        by: ``"rows"``: queries are the rows (``[n_queries, n_gallery]``); ``"cols"``:
            queries are the columns (e.g. t2i on an ``[n_images, n_texts]`` matrix).
        query_index: optional query rows/columns to use (e.g. one COCO 1K fold).
        gallery_index: optional gallery columns/rows to use.
        checked: the caller has verified that ``sims`` holds no NaN (see
            :func:`check_scores`); blocks are then not screened again.
    """

    def __init__(self, sims: Any, *, by: str = "rows", query_index: Any = None, gallery_index: Any = None,
                 checked: bool = False):
        self.sims = as_tensor(sims)
        if self.sims.ndim != 2:
            raise FeatvlrError(f"a similarity matrix must be 2-D, got shape {tuple(self.sims.shape)}")
        self.check_blocks = not checked
        if by not in ("rows", "cols"):
            raise ValueError(f"by must be 'rows' or 'cols', got {by!r}")
        self.by = by
        self.device = self.sims.device
        self.query_index = as_index(query_index, device=self.device)
        self.gallery_index = as_index(gallery_index, device=self.device)
        q_axis, g_axis = (0, 1) if by == "rows" else (1, 0)
        self.n_queries = len(self.query_index) if self.query_index is not None else self.sims.shape[q_axis]
        self.n_gallery = len(self.gallery_index) if self.gallery_index is not None else self.sims.shape[g_axis]

    def block(self, start: int, stop: int) -> torch.Tensor:
        s, qi, gi = self.sims, self.query_index, self.gallery_index
        if self.by == "rows":
            b = s[start:stop] if qi is None else s.index_select(0, qi[start:stop])
            if gi is not None:
                b = b.index_select(1, gi)
        else:
            b = s[:, start:stop] if qi is None else s.index_select(1, qi[start:stop])
            if gi is not None:
                b = b.index_select(0, gi)
            b = b.t()
        return _float(b)


class EmbeddingScores(ScoreSource):
    """Dot-product scores of ``[n_queries, d]`` query and ``[n_gallery, d]`` gallery embeddings,
    computed block by block with one matmul each. Finite embeddings give finite scores, so
    blocks are screened for NaN only when an embedding is not finite."""

    def __init__(self, queries: Any, gallery: Any):
        self.queries = as_tensor(queries)
        self.gallery = as_tensor(gallery, device=self.queries.device)
        if self.queries.ndim != 2 or self.gallery.ndim != 2 or self.queries.shape[1] != self.gallery.shape[1]:
            raise FeatvlrError(f"embeddings must be [n, d] with the same d; got {tuple(self.queries.shape)} "
                               f"and {tuple(self.gallery.shape)}")
        if self.queries.device.type == "cpu":  # half-precision matmul is slow or missing on CPU
            self.queries, self.gallery = _float(self.queries), _float(self.gallery)
        elif self.gallery.dtype != self.queries.dtype:
            self.gallery = self.gallery.to(self.queries.dtype)
        self.device = self.queries.device
        self.n_queries, self.n_gallery = self.queries.shape[0], self.gallery.shape[0]
        self._gt = self.gallery.t()
        self.check_blocks = not (bool(torch.isfinite(self.queries).all()) and bool(torch.isfinite(self.gallery).all()))

    def block(self, start: int, stop: int) -> torch.Tensor:
        return _float(self.queries[start:stop] @ self._gt)


class PairwiseScores(ScoreSource):
    """Scores from a pairwise score function, for token-level methods.

    Args:
        score_fn: ``score_fn(image_rows, text_rows) -> Tensor [len(image_rows), len(text_rows)]``
            where the rows are long tensors of image and text indices.
        n_images, n_texts: sizes of the two sides.
        queries: ``"images"`` (i2t: gallery = texts) or ``"texts"`` (t2i: gallery = images).
        image_index, text_index: optional subsets of rows (one COCO 1K fold).
        gallery_chunk: gallery items per ``score_fn`` call (bounds the method's own memory).
        device: where index tensors are built (the method's device).
    """

    def __init__(self, score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n_images: int, n_texts: int,
                 *, queries: str = "images", image_index: Any = None, text_index: Any = None,
                 gallery_chunk: int | None = None, device: torch.device | str = "cpu"):
        if queries not in ("images", "texts"):
            raise ValueError(f"queries must be 'images' or 'texts', got {queries!r}")
        self.score_fn = score_fn
        self.queries = queries
        self.device = torch.device(device)
        img = as_index(image_index, device=self.device) if image_index is not None else torch.arange(n_images, device=self.device)
        txt = as_index(text_index, device=self.device) if text_index is not None else torch.arange(n_texts, device=self.device)
        self.query_ids, self.gallery_ids = (img, txt) if queries == "images" else (txt, img)
        self.n_queries, self.n_gallery = len(self.query_ids), len(self.gallery_ids)
        self.gallery_chunk = int(gallery_chunk or self.n_gallery or 1)

    def block(self, start: int, stop: int) -> torch.Tensor:
        q = self.query_ids[start:stop]
        parts = []
        for g0 in range(0, self.n_gallery, self.gallery_chunk):
            g = self.gallery_ids[g0:g0 + self.gallery_chunk]
            part = self.score_fn(q, g) if self.queries == "images" else self.score_fn(g, q).t()
            if part.shape != (len(q), len(g)):
                raise FeatvlrError(f"the score function returned shape {tuple(part.shape)}, expected {(len(q), len(g))}")
            parts.append(_float(part.detach()).to(self.device))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class ShortlistRerankScores(ScoreSource):
    """"Global shortlist, then re-rank": the ``shortlist`` best items of each query by the
    global source are re-scored by ``rerank_fn``; every other item scores ``-inf``.

    ``rerank_fn(query_ids [q], candidate_ids [q, k]) -> Tensor [q, k]`` gets ids mapped
    through ``query_ids`` / ``gallery_ids`` (identity when None). Re-rank scores must be
    finite. Which of several items tied at the shortlist's cut-off get in follows
    ``torch.topk``. A ground truth outside the shortlist gets rank ``n_gallery``, a miss at every K
    (see the module docstring; the GLS reference code counts it as rank 0).
    """

    def __init__(self, global_source: ScoreSource, rerank_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 shortlist: int, *, query_ids: Any = None, gallery_ids: Any = None):
        if shortlist < 1:
            raise FeatvlrError(f"the shortlist size must be positive, got {shortlist}")
        self.base = global_source
        self.rerank_fn = rerank_fn
        self.shortlist = min(int(shortlist), global_source.n_gallery)
        self.device = global_source.device
        self.n_queries, self.n_gallery = global_source.n_queries, global_source.n_gallery
        self.query_ids = as_index(query_ids, device=self.device)
        self.gallery_ids = as_index(gallery_ids, device=self.device)

    def block(self, start: int, stop: int) -> torch.Tensor:
        g = self.base.block(start, stop)
        _check_nan(g)
        idx = torch.topk(g, self.shortlist, dim=1).indices
        q = torch.arange(start, stop, device=self.device)
        if self.query_ids is not None:
            q = self.query_ids[q]
        cand = self.gallery_ids[idx] if self.gallery_ids is not None else idx
        rescored = _float(self.rerank_fn(q, cand).detach()).to(self.device)
        if rescored.shape != idx.shape:
            raise FeatvlrError(f"the re-rank function returned shape {tuple(rescored.shape)}, expected {tuple(idx.shape)}")
        if not torch.isfinite(rescored).all():
            raise FeatvlrError("the re-rank function returned NaN or infinite scores")
        return torch.full_like(g, _NEG_INF).scatter_(1, idx, rescored)


def rerank_from_score_fn(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                         queries: str = "images") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Adapt a pairwise ``score_fn(image_rows, text_rows)`` into a shortlist re-rank function.

    It scores each query against its own candidates (one ``score_fn`` call per query, the
    cost being the method's pair scoring); methods with a vectorised pair scorer can pass
    their own ``rerank_fn`` instead.
    """

    def rerank(q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(len(q)):
            one = q[i:i + 1]
            s = score_fn(one, cand[i]) if queries == "images" else score_fn(cand[i], one).t()
            rows.append(s.reshape(1, -1))
        return torch.cat(rows, dim=0)

    return rerank


# --------------------------------------------------------------------------------------
# helpers


def _check_nan(block: torch.Tensor) -> None:
    # a sum is a cheap screen (NaN propagates); an inf - inf sum is then checked exactly
    if not bool(torch.isfinite(block.sum())) and bool(torch.isnan(block).any()):
        raise FeatvlrError("the scores contain NaN values")


def check_scores(sims: Any, chunk_rows: int = 4096) -> None:
    """Raise :class:`FeatvlrError` if a score matrix holds NaN (one pass, by row blocks)."""
    s = as_tensor(sims)
    for start in range(0, s.shape[0], chunk_rows):
        _check_nan(_float(s[start:start + chunk_rows]))


def _row_count(block: torch.Tensor, thr: torch.Tensor, op: str = "ge") -> torch.Tensor:
    """Per row, how many entries of ``block`` [q, G] are ``>=`` (or ``==``) ``thr`` [q, 1].

    On CPU through numpy, whose boolean row count is about 10x faster than torch's.
    """
    if block.device.type == "cpu":
        b, t = block.detach().numpy(), thr.detach().numpy()
        mask = b >= t if op == "ge" else b == t
        return torch.from_numpy(np.count_nonzero(mask, axis=1).astype(np.int64))
    mask = block >= thr if op == "ge" else block == thr
    return mask.sum(dim=1)


def iter_blocks(source: ScoreSource, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, block)`` over the source's queries, ``chunk_elements`` scores at a time;
    raises :class:`FeatvlrError` on NaN scores."""
    step = rows_per_block(source.n_gallery, chunk_elements)
    for start in range(0, source.n_queries, step):
        stop = min(start + step, source.n_queries)
        block = source.block(start, stop)
        if source.check_blocks:
            _check_nan(block)
        yield start, stop, block


def _index_matrix(x: Any, n_queries: int, device: torch.device, what: str) -> torch.Tensor | None:
    """``[Q]`` or ``[Q, m]`` indices (``-1`` = none) as a ``[Q, m]`` long tensor."""
    if x is None:
        return None
    t = as_index(x, device=device)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n_queries:
        raise FeatvlrError(f"{what} must have one row per query ({n_queries}); got shape {tuple(t.shape)}")
    return t


def _dedupe(idx: torch.Tensor) -> torch.Tensor:
    """Sort each row and replace repeated indices by -1 (so nothing is counted twice)."""
    if idx.shape[1] < 2:
        return idx
    s = idx.sort(dim=1).values
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    return s.masked_fill(dup, -1)


def _check_range(idx: torch.Tensor | None, n: int, what: str) -> None:
    if idx is not None and idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -1):
        raise FeatvlrError(f"{what} holds indices outside [-1, {n - 1}] (gallery of {n} items)")


def group_positives(labels: Any, n_groups: int) -> torch.Tensor:
    """``[n_groups, P]`` long matrix: row g lists the positions i with ``labels[i] == g``,
    padded with -1 (e.g. the captions of each image from the caption -> image index)."""
    lab = as_index(labels)
    valid = (lab >= 0) & (lab < n_groups)
    pos = torch.nonzero(valid).flatten()
    grp = lab[pos]
    order = torch.argsort(grp, stable=True)
    pos, grp = pos[order], grp[order]
    counts = torch.bincount(grp, minlength=n_groups)
    width = int(counts.max()) if len(counts) and counts.numel() else 0
    out = torch.full((n_groups, max(width, 1)), -1, dtype=torch.long)
    if len(pos):
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(pos)) - starts[grp]
        out[grp, slot] = pos
    return out.to(lab.device)


# --------------------------------------------------------------------------------------
# exact drivers


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


# --------------------------------------------------------------------------------------
# FAISS backend (top-k only)

FAISS_INDEXES = ("flat", "ivf", "hnsw")


def faiss_search(queries: Any, gallery: Any, k: int, *, index: str = "flat", nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
                 train_size: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search with FAISS, for galleries beyond exact search.

    Args:
        queries, gallery: ``[Q, d]`` and ``[G, d]`` embeddings (L2-normalised for cosine).
        k: list length.
        index: ``"flat"`` (exact ``IndexFlatIP``), ``"ivf"`` (``IndexIVFFlat``, ``nlist``
            cells, default ``4 * sqrt(G)``, ``nprobe`` probed) or ``"hnsw"``
            (``IndexHNSWFlat``, ``hnsw_m`` links, ``ef_search``).
        train_size: gallery vectors sampled to train IVF.

    Returns:
        ``scores [Q, k]`` float32 and ``ids [Q, k]`` int64 numpy arrays (ids -1 where fewer
        than k were found).
    """
    try:
        import faiss
    except ImportError:
        raise FeatvlrError("the FAISS backend needs faiss (pip install faiss-cpu)") from None
    q = np.ascontiguousarray(as_tensor(queries).float().cpu().numpy())
    g = np.ascontiguousarray(as_tensor(gallery).float().cpu().numpy())
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise FeatvlrError(f"embeddings must be [n, d] with the same d; got {q.shape} and {g.shape}")
    d = g.shape[1]
    k = min(int(k), g.shape[0])
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = int(nlist or max(1, min(g.shape[0] // 39, int(4 * math.sqrt(g.shape[0])))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = g if g.shape[0] <= train_size else g[np.sort(rng.choice(g.shape[0], train_size, replace=False))]
        idx.train(sample)
        idx.nprobe = min(int(nprobe), nlist)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(ef_construction)
        idx.hnsw.efSearch = max(int(ef_search), k)
    else:
        raise FeatvlrError(f"unknown FAISS index {index!r} (known: {', '.join(FAISS_INDEXES)})")
    idx.add(g)
    scores, ids = idx.search(q, k)
    return scores, ids.astype(np.int64)


def ranks_from_topk(ids: Any, positives: Any) -> torch.Tensor:
    """0-based rank of the first positive in each top-k list; ``k`` (the list length) when no
    positive is in the list (a miss for every R@K with K <= k); -1 when a query has no positive.

    ``ids`` is ``[Q, k]`` gallery indices, ``positives`` ``[Q]`` or ``[Q, P]`` (``-1`` pads).
    """
    ids_t = as_index(ids)
    pos = _index_matrix(positives, ids_t.shape[0], ids_t.device, "positives")
    k = ids_t.shape[1]
    hit = ((ids_t[:, :, None] == pos[:, None, :]) & (pos[:, None, :] >= 0) & (ids_t[:, :, None] >= 0)).any(-1)
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((ids_t.shape[0],), k, dtype=torch.long))
    return torch.where((pos >= 0).any(1), first, torch.full_like(first, -1))


# --------------------------------------------------------------------------------------
# embedding a split


def concat_outputs(parts: list[Any]) -> Any:
    """Concatenate encoder outputs along dim 0: tensors, or dicts of tensors (padded token
    features and masks, zero/False padded to the largest size in the other dims)."""
    if not parts:
        raise FeatvlrError("nothing to concatenate: the split has no rows")
    if isinstance(parts[0], dict):
        return {key: concat_outputs([p[key] for p in parts]) for key in parts[0]}
    if not isinstance(parts[0], torch.Tensor):
        raise FeatvlrError(f"encoders must return tensors or dicts of tensors, got {type(parts[0]).__name__}")
    if parts[0].ndim <= 1:
        return torch.cat(parts, dim=0)
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim)]
    padded = []
    for p in parts:
        if list(p.shape[1:]) != shape:
            pad: list[int] = []
            for d in reversed(range(1, p.ndim)):
                pad += [0, shape[d - 1] - p.shape[d]]
            p = torch.nn.functional.pad(p, pad)
        padded.append(p)
    return torch.cat(padded, dim=0)


def _reorder(out: Any, ids: torch.Tensor | None, n: int) -> Any:
    if ids is None:
        return out
    if len(ids) != n or not torch.equal(torch.sort(ids).values, torch.arange(n)):
        raise FeatvlrError(f"the batches did not cover the {n} rows of the split exactly once")
    if torch.equal(ids, torch.arange(n)):
        return out
    inv = torch.empty_like(ids)
    inv[ids] = torch.arange(n)
    if isinstance(out, dict):
        return {k: v[inv.to(v.device)] for k, v in out.items()}
    return out[inv.to(out.device)]


def _run_encoder(encode: Callable[[dict], Any], batches, id_key: str, n: int) -> Any:
    outs, ids = [], []
    for batch in batches:
        outs.append(encode(batch))
        if id_key in batch:
            ids.append(as_index(batch[id_key]).cpu())
    out = concat_outputs(outs)
    return _reorder(out, torch.cat(ids) if len(ids) == len(outs) and ids else None, n)


@torch.no_grad()
def embed_split(method: Any, split: Any, *, batch_size: int = 512, device: str | torch.device = "cpu",
                max_tokens: int = 0) -> tuple[Any, Any]:
    """Run a method's encoders over every image and text of a store split.

    Args:
        method: a :class:`~featvlr.methods.base.Method` (put in eval mode for the call).
        split: a :class:`~featvlr.store.StoreSplit`.
        batch_size, device: passed to :func:`featvlr.data.iter_image_batches` and
            :func:`featvlr.data.iter_text_batches`.

    Returns:
        ``(images, texts)``: ``[n_images, d]`` and ``[n_texts, d]`` tensors in split row order
        (for pairwise methods, dicts of tensors concatenated along dim 0).
    """
    from featvlr import data

    was_training = method.training
    method.eval()
    try:
        images = _run_encoder(method.encode_images, data.iter_image_batches(split, batch_size, device),
                              "image_ids", split.n_images)
        texts = _run_encoder(method.encode_texts, data.iter_text_batches(split, batch_size, device, max_tokens),
                             "text_ids", split.n_texts)
    finally:
        method.train(was_training)
    return images, texts
