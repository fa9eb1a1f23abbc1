"""Score sources and top-k lists of a trained method over encoder outputs, built the way the
evaluation builds them, so a search ranks exactly as ``featvlr eval`` does.

- Cross-modal (i2t, t2i): :func:`cross_source` asks the method's ``shortlist_plan`` (GLS:
  global shortlist, then local re-rank), scores every pair with ``method.score`` for a
  pairwise method, or takes dot products of embeddings; the sources are those of
  :func:`featvlr.evaluation.cross_modal.evaluate_cross_modal`.
- Uni-modal (i2i, t2t): dot products of the global embeddings, the query itself excluded.
- Composed: dot products of query and gallery embeddings, the reference excluded where the
  protocol removes it (CIRR, Shoes), as :func:`featvlr.evaluation.composed.evaluate_composed`.

Top-k lists come from :func:`featvlr.retrieval.topk` (chunked, ``torch.topk`` order among
equal scores) or from a FAISS index (:class:`featvlr.inference.index.FaissIndex`).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.split_data import n_rows
from featvlr.retrieval import DEFAULT_CHUNK_ELEMENTS, EmbeddingScores, ScoreSource, as_tensor, topk

DIRECTIONS = {"images": "i2t", "texts": "t2i"}
SEARCH_BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")


def cross_source(method: Any, images: Any, texts: Any, queries: str) -> ScoreSource:
    """The evaluation's score source of ``queries`` (``"images"``: i2t, gallery = ``texts``;
    ``"texts"``: t2i, gallery = ``images``) over encoder outputs of any two sets.

    Args:
        method: the trained method (its ``shortlist_plan``, ``pairwise`` and ``score``).
        images, texts: ``encode_images`` / ``encode_texts`` outputs (tensors or dicts).
        queries: ``"images"`` or ``"texts"``.
    """
    from featvlr.evaluation.cross_modal import cross_score_sources
    from featvlr.evaluation.methods import pairwise_score_fn

    if queries not in DIRECTIONS:
        raise ValueError(f"queries must be 'images' or 'texts', got {queries!r}")
    sizes = SimpleNamespace(n_images=n_rows(images), n_texts=n_rows(texts))
    plan = method.shortlist_plan(images, texts)
    if plan is not None:
        img, txt = as_tensor(plan["images"]), as_tensor(plan["texts"])
        shortlist = plan.get("shortlist")
        if isinstance(shortlist, int):
            shortlist = (shortlist, shortlist)
        score_fn = pairwise_score_fn(method, images, texts) if plan.get("rerank_fn") is None else None
        sources = cross_score_sources(img, txt, None, sizes, None, None, score_fn, plan.get("rerank_fn"), shortlist,
                                 img.device)
    elif method.pairwise or isinstance(images, dict):
        device = next(iter(images.values())).device if isinstance(images, dict) else images.device
        sources = cross_score_sources(None, None, None, sizes, None, None, pairwise_score_fn(method, images, texts),
                                 None, None, device)
    else:
        img = as_tensor(images)
        sources = cross_score_sources(img, as_tensor(texts, device=img.device), None, sizes, None, None, None, None,
                                 None, img.device)
    return sources[DIRECTIONS[queries]]


def global_embeddings(method: Any, images: Any, texts: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(images [N, d], texts [T, d])`` global embeddings for the uni-modal scenarios: the
    outputs themselves, those of a shortlist plan (GLS), or None (a pairwise score only)."""
    plan = method.shortlist_plan(images, texts)
    if plan is not None:
        return as_tensor(plan["images"]), as_tensor(plan["texts"])
    if method.pairwise or isinstance(images, dict):
        return None
    return as_tensor(images), as_tensor(texts)


def top_items(source: ScoreSource, k: int, *, exclude: Any = None,
              chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [Q, k], rows [Q, k])`` of every query of ``source``: :func:`featvlr.retrieval.topk`,
    with the slots of items that score ``-inf`` (outside a shortlist, excluded) dropped to row
    ``-1``."""
    if k < 1:
        raise FeatvlrError(f"k must be positive, got {k}")
    values, rows = topk(source, k, exclude=exclude, chunk_elements=chunk_elements)
    rows = rows.masked_fill(torch.isinf(values) & (values < 0), -1)
    return values, rows


class CheckedGalleryScores(EmbeddingScores):
    """:class:`~featvlr.retrieval.EmbeddingScores` over a gallery already known to be finite
    (a gallery index checks it once): only the queries are screened, so a one-query search
    costs a matmul and a top-k, not a pass over the whole gallery."""

    def __init__(self, queries: Any, gallery: Any):
        q = as_tensor(queries)
        g = as_tensor(gallery, device=q.device)
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise FeatvlrError(f"embeddings must be [n, d] with the same d; got {tuple(q.shape)} and {tuple(g.shape)}")
        if q.device.type == "cpu" or g.dtype != q.dtype:
            q, g = q.float(), g.float()
        self.queries, self.gallery, self.device = q, g, q.device
        self.n_queries, self.n_gallery = q.shape[0], g.shape[0]
        self._gt = g.t()
        self.check_blocks = not bool(torch.isfinite(q).all())


def embedding_top_items(queries: Any, gallery: Any, k: int, *, exclude: Any = None, gallery_finite: bool = False,
                        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_items` of dot products of ``[Q, d]`` queries and a ``[G, d]`` gallery
    (``gallery_finite``: checked already, see :class:`CheckedGalleryScores`)."""
    q = as_tensor(queries)
    g = as_tensor(gallery, device=q.device)
    source = CheckedGalleryScores(q, g) if gallery_finite else EmbeddingScores(q, g)
    return top_items(source, k, exclude=exclude, chunk_elements=chunk_elements)
