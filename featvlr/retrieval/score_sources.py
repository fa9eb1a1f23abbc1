"""Score sources: the scores of a range of queries against the whole gallery, block by block
(see :mod:`featvlr.retrieval` for the tie rule)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval.tensors import (
    _NEG_INF,
    DEFAULT_CHUNK_ELEMENTS,
    _check_nan,
    _float,
    as_index,
    as_tensor,
    rows_per_block,
)


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
        img = (as_index(image_index, device=self.device) if image_index is not None
               else torch.arange(n_images, device=self.device))
        txt = (as_index(text_index, device=self.device) if text_index is not None
               else torch.arange(n_texts, device=self.device))
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
                raise FeatvlrError(f"the score function returned shape {tuple(part.shape)}, "
                                   f"expected {(len(q), len(g))}")
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
            raise FeatvlrError(f"the re-rank function returned shape {tuple(rescored.shape)}, "
                               f"expected {tuple(idx.shape)}")
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


def iter_blocks(source: ScoreSource,
                chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, block)`` over the source's queries, ``chunk_elements`` scores at a time;
    raises :class:`FeatvlrError` on NaN scores."""
    step = rows_per_block(source.n_gallery, chunk_elements)
    for start in range(0, source.n_queries, step):
        stop = min(start + step, source.n_queries)
        block = source.block(start, stop)
        if source.check_blocks:
            _check_nan(block)
        yield start, stop, block
