"""Evaluation scenarios over a cache split: i2t, t2i, i2i, t2t, i2it, t2it and composed.

Results are one flat ``dict[str, float]`` keyed ``"<scenario>/<metric>"`` (the scenario
names are stable), plus ``rsum`` and ``r_mean`` at the top level when both i2t and t2i ran::

    i2t/R@1 i2t/R@5 i2t/R@10 i2t/medr i2t/meanr        whole split (F30K 1K, COCO 5K)
    t2i/...                                            same for text -> image
    rsum, r_mean                                       i2t + t2i recalls; X-VLM's mean recall
    i2t_5fold/..., t2i_5fold/..., rsum_5fold           COCO 1K: mean over 5 folds of 1000 images
    i2t/ndcg_exp@25, t2i/ndcg_exp@25                   TERAN NDCG, ROUGE-L (``teran_ndcg=True``)
    i2t/ndcg_exp@25_nonzero                            TERAN's i2t average (non-zero values only)
    i2i/ndcg_lin@10 .../ndcg_lin@50, i2i/ndcg_exp@25   uni-modal / mixed NDCG (CoVLR/RVLR)
    t2t/..., t2t_nosiblings/..., i2it/..., t2it/...
    composed/R@1 ..., composed/Rsubset@1 ...           CIRR; FashionIQ: composed/dress_R@10 ...

Protocols (as the papers' code computes them; the differences from the peers' code are deliberate):

- **i2t / t2i** (VSE++ / VSE-infinity's evaluation); ties are pessimistic (:mod:`featvlr.retrieval`).
  COCO 1K is the VSE-family 5-fold average (not the first 1000 images of RVLR/CoVLR).
- **Uni-modal and mixed** (CoVLR / RVLR's NDCG, TERAN's for t2t), relevance from the ROUGE-L matrix
  ``R`` ``[n_texts, n_images]``; ``first(a)`` is the first caption of image ``a``:

  ========  ===================  ============================  ==========================================
  scenario  queries              gallery                       relevance of query a
  ========  ===================  ============================  ==========================================
  i2i       images               images                        image b: ``R[first(a), b]``
  t2t       first captions       all captions                  caption c: ``R[c, a]``
  i2it      images               images, then captions         ``[R[first(a), b] | R[c, a]]``
  t2it      first captions       captions, then images         ``[R[c, a] | R[first(a), b]]``
  ========  ===================  ============================  ==========================================

  The query itself is **removed** from its gallery in all four (its score and its relevance
  leave both the ranking and the ideal ranking), not given a score of 0 as in the peer code,
  where it still outranks items with negative similarity. In the mixed scenarios the peers
  keep it; removing it is the consistent choice, since otherwise every query finds itself
  first. In t2t and t2it the other captions of the query's image stay in the gallery, as in
  the papers; ``t2t_without_siblings=True`` also reports ``t2t_nosiblings`` with them
  removed. The t2it image block is query-by-image (the peer code transposes it, and its
  relevance, so that row a holds image a against every query). Both sub-galleries are
  scored by the same embeddings, so they are on one scale (the peers mix cosines with ITM
  logits). NDCG values are fractions (RVLR prints x100).
- **composed** (section 2.4): one split is one gallery. CIRR removes the reference and ranks
  the target among the other members of its image set for Rsubset@K; Shoes removes the
  reference (as MLCL does); FashionIQ keeps it, each category being its own split.

This module is the public entry to the scenarios; the implementation is split by job in
:mod:`featvlr.evaluation` (``cross_modal``, ``unimodal``, ``composed``, ``methods``,
``embed``, ``options``). A method is evaluated by an evaluator
(:mod:`featvlr.evaluation.evaluators`: :class:`CrossModalEvaluator`,
:class:`ComposedEvaluator`), the one its task builds (:func:`featvlr.tasks.evaluate_method`,
as the trainer and ``featvlr eval`` do).
"""
from __future__ import annotations

from featvlr.evaluation.composed import (
    average_fashioniq,
    cirr_submission,
    composed_galleries,
    evaluate_composed,
    evaluate_composed_method,
    resolve_composed_protocol,
    write_cirr_submission,
)
from featvlr.evaluation.cross_modal import CrossModalScores, cross_modal_metrics, evaluate_cross_modal
from featvlr.evaluation.evaluators import ComposedEvaluator, CrossModalEvaluator, Evaluator
from featvlr.evaluation.methods import pairwise_score_fn
from featvlr.evaluation.options import (
    BACKENDS,
    CROSS_MODAL,
    SCENARIOS,
    TIE_RULE,
    UNI_AND_MIXED,
    EvalOptions,
    parse_scenarios,
)
from featvlr.evaluation.split_data import first_captions

__all__ = [
    "BACKENDS", "CROSS_MODAL", "SCENARIOS", "TIE_RULE", "UNI_AND_MIXED", "ComposedEvaluator", "CrossModalEvaluator",
    "CrossModalScores", "EvalOptions", "Evaluator", "average_fashioniq", "cirr_submission", "composed_galleries",
    "cross_modal_metrics", "evaluate_composed", "evaluate_composed_method", "evaluate_cross_modal", "first_captions",
    "pairwise_score_fn", "parse_scenarios", "resolve_composed_protocol", "write_cirr_submission",
]
