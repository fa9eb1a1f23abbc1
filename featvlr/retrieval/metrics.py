"""Retrieval metrics: cross-modal Recall@K, NDCG@K and composed-retrieval Recall@K.

The three public functions take full score matrices (numpy arrays or torch tensors, CPU or
CUDA) and compute exact results by chunks through :mod:`featvlr.retrieval`; the
``*_from_ranks`` helpers turn rank vectors into metrics for callers that rank otherwise
(embeddings, pairwise scores, FAISS).

Definitions (the protocols behind them: :mod:`featvlr.evaluation.scenarios`):

- Ranks are 0-based; ``R@K = 100 * hits / n`` (hits: queries with rank < K, so 11 of 20
  is exactly 55.0); ``medr = floor(median(rank)) + 1``; ``meanr = mean(rank) + 1``. An
  image's i2t rank is that of its best caption.
- Ties are broken pessimistically: a rank counts every other (non-ground-truth, non-excluded)
  candidate scoring at least as high as the ground truth; see :mod:`featvlr.retrieval`.
- ``rsum`` is the sum of the i2t and t2i recalls; with ``folds > 1`` every metric is the mean
  over the folds, and so is ``rsum`` (not 6x it, as VSE++ HEAD and TERAN print).
- NDCG@K is a fraction in [0, 1]; ``gain="exp"`` is TERAN's ``2^rel - 1``, ``gain="linear"``
  CoVLR/RVLR's ``rel`` (RVLR prints it x100). Key names state the gain: ``ndcg_exp@25``,
  ``ndcg_lin@10``. :func:`ndcg` returns per-query values: TERAN averages its i2t values over
  the non-zero ones only, the scenarios report both means (``..._nonzero``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval import (
    DEFAULT_CHUNK_ELEMENTS,
    DenseScores,
    as_index,
    as_tensor,
    check_scores,
    group_positives,
    ndcg_scores,
    ranks,
    ranks_within,
)


def ndcg_key(gain: str, k: int) -> str:
    """Metric name of NDCG@k with the given gain: ``ndcg_exp@25``, ``ndcg_lin@10``."""
    return f"ndcg_{'exp' if gain == 'exp' else 'lin'}@{k}"


def _valid_ranks(r: Any) -> np.ndarray:
    r = np.asarray(as_tensor(r).cpu().numpy() if not isinstance(r, np.ndarray) else r, dtype=np.int64)
    return r[r >= 0]


def recall_from_ranks(ranks_: Any, ks: Sequence[int], *, prefix: str = "", with_ranks: bool = True) -> dict[str, float]:
    """``{prefix}R@K`` (percent) for each K, then ``{prefix}medr`` and ``{prefix}meanr``.

    Ranks are 0-based; negative ranks (queries without a ground truth) are dropped.
    """
    r = _valid_ranks(ranks_)
    if len(r) == 0:
        raise FeatvlrError("no query has a ground truth in its gallery")
    out = {f"{prefix}R@{k}": 100.0 * int(np.count_nonzero(r < k)) / len(r) for k in ks}
    if with_ranks:
        out[f"{prefix}medr"] = float(math.floor(np.median(r)) + 1)
        out[f"{prefix}meanr"] = float(np.mean(r) + 1)
    return out


def recall_curve(ranks_: Any, max_k: int = 50) -> list[float]:
    """R@1 ... R@max_k (percent) from 0-based ranks (for plots)."""
    r = _valid_ranks(ranks_)
    if len(r) == 0:
        return []
    counts = np.bincount(np.minimum(r, max_k), minlength=max_k + 1)[:max_k]
    return [float(x) for x in 100.0 * np.cumsum(counts) / len(r)]


def default_txt2img(n_images: int, n_texts: int) -> np.ndarray:
    """Caption ``c`` belongs to image ``c // (n_texts // n_images)`` (5 captions per image)."""
    if n_images <= 0 or n_texts % n_images:
        raise FeatvlrError(f"{n_texts} texts do not split evenly over {n_images} images; pass txt2img")
    return np.arange(n_texts, dtype=np.int64) // (n_texts // n_images)


def fold_ranges(n_images: int, folds: int) -> list[tuple[int, int]]:
    """Image ranges of the ``folds`` diagonal blocks (COCO 1K: 5 x 1000 images)."""
    if folds < 1 or n_images % folds:
        raise FeatvlrError(f"{n_images} images do not split into {folds} equal folds")
    size = n_images // folds
    return [(f * size, (f + 1) * size) for f in range(folds)]


def fold_texts(txt2img: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Texts whose image lies in ``[lo, hi)``."""
    return np.nonzero((txt2img >= lo) & (txt2img < hi))[0]


def iter_folds(txt2img: np.ndarray, n_images: int, folds: int
               ) -> Iterator[tuple[np.ndarray | None, np.ndarray | None, np.ndarray, int]]:
    """``(image_index, text_index, local_txt2img, n_fold_images)`` of each fold: with one fold
    the whole split (indices None, the index as given); else each diagonal block of
    :func:`fold_ranges` with its texts (:func:`fold_texts`) and their images renumbered from 0."""
    for lo, hi in fold_ranges(n_images, folds):
        if folds == 1:
            yield None, None, txt2img, hi - lo
        else:
            txt_idx = fold_texts(txt2img, lo, hi)
            yield np.arange(lo, hi), txt_idx, txt2img[txt_idx] - lo, hi - lo


def average_folds(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over folds."""
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def cross_modal_summary(i2t_ranks: Any, t2i_ranks: Any, ks: Sequence[int] = (1, 5, 10),
                        *, with_ranks: bool = True) -> dict[str, float]:
    """``i2t_R@K``, ``i2t_medr``, ``i2t_meanr``, the same for ``t2i_`` and ``rsum``."""
    out = recall_from_ranks(i2t_ranks, ks, prefix="i2t_", with_ranks=with_ranks)
    out.update(recall_from_ranks(t2i_ranks, ks, prefix="t2i_", with_ranks=with_ranks))
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks))
    return out


def cross_modal_recall(sims: Any, txt2img: Any = None, ks: Sequence[int] = (1, 5, 10), folds: int = 1,
                       *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[str, float]:
    """Image-to-text and text-to-image Recall@K, medr, meanr and rsum.

    Args:
        sims: ``[n_images, n_texts]`` scores (numpy or torch, CPU or CUDA).
        txt2img: ``[n_texts]`` image of each text (default ``c // (n_texts // n_images)``;
            ``-1``: a text with no image, a distractor for i2t and not a t2i query).
        ks: recall cut-offs.
        folds: 1, or 5 for the COCO 1K protocol (images ``[n/5 f, n/5 (f+1))`` against their
            texts; every metric, rsum included, is the mean over the folds).
        chunk_elements: most scores held at once beyond ``sims``.

    Returns:
        ``i2t_R@K`` ... ``i2t_medr``, ``i2t_meanr``, the same for ``t2i_``, and ``rsum``.
        Recall in percent; images with no text are not i2t queries.
    """
    s = as_tensor(sims)
    if s.ndim != 2:
        raise FeatvlrError(f"sims must be [n_images, n_texts], got shape {tuple(s.shape)}")
    n_img, n_txt = s.shape
    t2i = default_txt2img(n_img, n_txt) if txt2img is None else as_index(txt2img).cpu().numpy()
    if t2i.shape != (n_txt,):
        raise FeatvlrError(f"txt2img has {t2i.shape[0] if t2i.ndim else 0} entries, expected one per text ({n_txt})")
    if t2i.size and (t2i.max() >= n_img or t2i.min() < -1):
        raise FeatvlrError(f"txt2img points outside the {n_img} images")
    check_scores(s)
    per_fold = []
    for img_idx, txt_idx, local, n_fold in iter_folds(t2i, n_img, folds):
        i2t_src = DenseScores(s, by="rows", query_index=img_idx, gallery_index=txt_idx, checked=True)
        t2i_src = DenseScores(s, by="cols", query_index=txt_idx, gallery_index=img_idx, checked=True)
        r_i2t = ranks(i2t_src, group_positives(local, n_fold).to(s.device), chunk_elements=chunk_elements)
        r_t2i = ranks(t2i_src, torch.as_tensor(local), chunk_elements=chunk_elements)
        per_fold.append(cross_modal_summary(r_i2t, r_t2i, ks))
    return average_folds(per_fold)


def ndcg(sims: Any, relevance: Any, k: int, gain: str = "exp", exclude: Any = None,
         *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """Per-query NDCG@k (fractions).

    Args:
        sims: ``[n_queries, n_gallery]`` scores.
        relevance: ``[n_queries, n_gallery]`` graded relevance (row = query).
        k: cut-off.
        gain: ``"exp"`` (``2^rel - 1``, TERAN) or ``"linear"`` (``rel``, CoVLR/RVLR).
        exclude: ``[n_queries]`` (or ``[n_queries, m]``) gallery index removed from each
            query's ranking and ideal ranking, ``-1`` for none (the query itself in i2i/t2t).

    Returns:
        ``[n_queries]`` float64 numpy array; 0 where the ideal DCG is 0. The ranked list is
        ordered by score descending, equal scores by relevance ascending (pessimistic).
    """
    s = as_tensor(sims)
    if s.ndim != 2:
        raise FeatvlrError(f"sims must be [n_queries, n_gallery], got shape {tuple(s.shape)}")
    rel = as_tensor(relevance)
    if tuple(rel.shape) != tuple(s.shape):
        raise FeatvlrError(f"relevance has shape {tuple(rel.shape)}, expected {tuple(s.shape)} like the scores")
    out = ndcg_scores(DenseScores(s), rel, k, gain=gain, exclude=exclude, chunk_elements=chunk_elements)
    return out.numpy()


def composed_summary(main_ranks: Any, ks: Sequence[int], subset_ranks: Any = None,
                     subset_ks: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
    """``R@K`` (and ``Rsubset@K``) in percent from 0-based ranks."""
    out = recall_from_ranks(main_ranks, ks, with_ranks=False)
    if subset_ranks is not None:
        sub = recall_from_ranks(subset_ranks, subset_ks, with_ranks=False)
        out.update({key.replace("R@", "Rsubset@"): v for key, v in sub.items()})
    return out


def composed_recall(sims: Any, target: Any, ks: Sequence[int] = (1, 5, 10, 50), reference: Any = None,
                    subsets: Any = None, subset_ks: Sequence[int] = (1, 2, 3),
                    *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[str, float]:
    """Composed image retrieval Recall@K (and CIRR's Recall_subset@K).

    Args:
        sims: ``[n_queries, n_gallery]`` scores of the composed queries against the gallery.
        target: ``[n_queries]`` gallery index of each target (``-1``: no target, skipped).
        ks: cut-offs of ``R@K``.
        reference: ``[n_queries]`` gallery index removed from each query's gallery (CIRR,
            Shoes); ``None`` keeps it (FashionIQ).
        subsets: ``[n_queries, m]`` gallery indices of each query's image set (CIRR: 6
            members, ``-1`` pads); ``Rsubset@K`` ranks the target among the members other
            than the reference.
        subset_ks: cut-offs of ``Rsubset@K``.

    Returns:
        ``R@K`` for each K and, with ``subsets``, ``Rsubset@K``; percent.
    """
    s = as_tensor(sims)
    if s.ndim != 2:
        raise FeatvlrError(f"sims must be [n_queries, n_gallery], got shape {tuple(s.shape)}")
    tgt = as_index(target)
    if tuple(tgt.shape) != (s.shape[0],):
        raise FeatvlrError(f"target has shape {tuple(tgt.shape)}, expected ({s.shape[0]},)")
    src = DenseScores(s)
    main = ranks(src, tgt, exclude=reference, chunk_elements=chunk_elements)
    sub = None
    if subsets is not None:
        sub = ranks_within(src, tgt, subsets, exclude=reference, chunk_elements=chunk_elements)
    return composed_summary(main, ks, sub, subset_ks)
