"""Exact chunked scoring and ranking, and a FAISS backend (the public API of the package).

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

Modules: :mod:`~featvlr.retrieval.tensors` (inputs, index matrices, NaN screening),
:mod:`~featvlr.retrieval.score_sources` (score sources, :func:`iter_blocks`),
:mod:`~featvlr.retrieval.ranking` (:func:`ranks`, :func:`ranks_within`, :func:`topk`),
:mod:`~featvlr.retrieval.ndcg` and :mod:`~featvlr.retrieval.faiss_backend`. Embedding a
split with a method is evaluation's job (:mod:`featvlr.evaluation.embed`).
"""
from __future__ import annotations

from featvlr.retrieval.faiss_backend import FAISS_INDEXES, faiss_search, ranks_from_topk
from featvlr.retrieval.ndcg import ndcg_multi, ndcg_scores
from featvlr.retrieval.ranking import ranks, ranks_within, topk
from featvlr.retrieval.score_sources import (
    DenseScores,
    EmbeddingScores,
    PairwiseScores,
    ScoreSource,
    ShortlistRerankScores,
    iter_blocks,
    rerank_from_score_fn,
)
from featvlr.retrieval.tensors import (
    DEFAULT_CHUNK_ELEMENTS,
    as_index,
    as_tensor,
    check_scores,
    group_positives,
    rows_per_block,
)

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS", "FAISS_INDEXES", "DenseScores", "EmbeddingScores", "PairwiseScores", "ScoreSource",
    "ShortlistRerankScores", "as_index", "as_tensor", "check_scores", "faiss_search", "group_positives",
    "iter_blocks", "ndcg_multi", "ndcg_scores", "ranks", "ranks_from_topk", "ranks_within", "rerank_from_score_fn",
    "rows_per_block", "topk",
]
