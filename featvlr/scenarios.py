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

Protocols (``METHODS.md`` section 2; the differences from the peers' code are deliberate):

- **i2t / t2i**: section 2.1; ties are pessimistic (:mod:`featvlr.retrieval`). COCO 1K is the
  VSE-family 5-fold average (not the first 1000 images of RVLR/CoVLR).
- **Uni-modal and mixed** (section 2.3), relevance from the ROUGE-L matrix ``R`` ``[n_texts,
  n_images]``; ``first(a)`` is the first caption of image ``a``:

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
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.errors import FeatvlrError, InputError
from featvlr.metrics import (
    average_folds,
    composed_summary,
    default_txt2img,
    fold_ranges,
    fold_texts,
    ndcg_key,
    recall_curve,
    recall_from_ranks,
)
from featvlr.retrieval import (
    DEFAULT_CHUNK_ELEMENTS,
    DenseScores,
    EmbeddingScores,
    PairwiseScores,
    ScoreSource,
    ShortlistRerankScores,
    as_index,
    as_tensor,
    check_scores,
    embed_split,
    faiss_search,
    group_positives,
    iter_blocks,
    ndcg_multi,
    ranks,
    ranks_from_topk,
    ranks_within,
    rerank_from_score_fn,
    topk,
)

CROSS_MODAL = ("i2t", "t2i")
UNI_AND_MIXED = ("i2i", "t2t", "i2it", "t2it")
SCENARIOS = CROSS_MODAL + UNI_AND_MIXED + ("composed",)
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")

TIE_RULE = ("pessimistic: a rank counts every other non-excluded candidate scoring >= the ground truth; "
            "NDCG orders equal scores by relevance ascending")


def parse_scenarios(value: str | Sequence[str] | None) -> list[str] | None:
    """``"all"``/None -> None (every scenario the input allows); ``"i2t,t2i"`` -> a checked list."""
    if value is None:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items or items == ["all"]:
        return None
    unknown = [v for v in items if v not in SCENARIOS]
    if unknown:
        raise FeatvlrError(f"unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)}, or 'all')")
    return list(dict.fromkeys(items))


def _folds_tuple(folds: int | Sequence[int]) -> tuple[int, ...]:
    return (int(folds),) if isinstance(folds, (int, np.integer)) else tuple(int(f) for f in folds)


def _fold_suffix(f: int) -> str:
    return "" if f == 1 else f"_{f}fold"


def first_captions(txt2img: np.ndarray, n_images: int) -> np.ndarray:
    """``[n_images]`` index of each image's first caption (-1 where it has none)."""
    first = np.full(n_images, -1, dtype=np.int64)
    valid = np.nonzero((txt2img >= 0) & (txt2img < n_images))[0]
    # reversed assignment leaves the smallest caption index for each image
    first[txt2img[valid[::-1]]] = valid[::-1]
    return first


# --------------------------------------------------------------------------------------
# split data


class _SplitData:
    """The caption -> image index and the relevance of a split or of given arrays."""

    def __init__(self, split_or_arrays: Any, n_images: int | None, n_texts: int | None):
        self.split = None
        self._relevance: Any = None
        self._rel_loaded = False
        self.txt2img: np.ndarray | None = None
        if split_or_arrays is None:
            pass
        elif isinstance(split_or_arrays, Mapping):
            t = split_or_arrays.get("txt2img", split_or_arrays.get("image_index"))
            self.txt2img = None if t is None else as_index(t).cpu().numpy()
            self._relevance = split_or_arrays.get("relevance")
            self._rel_loaded = True
        else:
            self.split = split_or_arrays
            self.txt2img = split_or_arrays.image_index()
            n_images = n_images if n_images is not None else split_or_arrays.n_images
        if n_images is None and self._relevance is not None:
            n_images = int(np.shape(self._relevance)[1])
        if n_images is None and self.txt2img is not None and self.txt2img.size:
            n_images = int(self.txt2img.max()) + 1
        if n_images is None:
            raise FeatvlrError("the number of images is unknown: pass embeddings or a split")
        if self.txt2img is None:
            if n_texts is None:
                raise FeatvlrError("the number of texts is unknown: pass embeddings, txt2img or a split")
            self.txt2img = default_txt2img(n_images, n_texts)
        self.n_images = int(n_images)
        self.n_texts = len(self.txt2img)
        if n_texts is not None and n_texts != self.n_texts:
            raise FeatvlrError(f"{n_texts} text rows but the caption -> image index has {self.n_texts} entries")
        if self.txt2img.size and (self.txt2img.max() >= self.n_images or self.txt2img.min() < -1):
            raise FeatvlrError(f"the caption -> image index points outside the {self.n_images} images")

    def relevance(self, needed_by: str) -> torch.Tensor:
        if not self._rel_loaded:
            self._relevance = self.split.relevance("rougeL") if self.split is not None else None
            self._rel_loaded = True
        if self._relevance is None:
            where = f"relevance/{self.split.name}/rougeL" if self.split is not None else "a relevance matrix"
            raise FeatvlrError(f"scenario {needed_by} needs {where} (ROUGE-L, [n_texts, n_images])")
        rel = as_tensor(self._relevance)
        if tuple(rel.shape) != (self.n_texts, self.n_images):
            raise FeatvlrError(f"the relevance matrix has shape {tuple(rel.shape)}, expected "
                               f"{(self.n_texts, self.n_images)} (texts x images)")
        self._relevance = rel
        return rel

    @property
    def has_relevance(self) -> bool:
        if not self._rel_loaded and self.split is not None:
            return self.split.has(f"relevance/{self.split.name}/rougeL")
        return self._relevance is not None


def _n_rows(x: Any) -> int | None:
    if x is None:
        return None
    if isinstance(x, dict):
        return int(next(iter(x.values())).shape[0])
    return int(x.shape[0])


# --------------------------------------------------------------------------------------
# cross-modal recall


def evaluate_cross_modal(img_emb: Any, txt_emb: Any, split_or_arrays: Any = None,
                         scenarios: str | Sequence[str] | None = CROSS_MODAL, folds: int | Sequence[int] = 1, *,
                         ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = (10, 20, 50),
                         ndcg_exp_k: int = 25, teran_ndcg: bool = False, t2t_without_siblings: bool = False,
                         score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                         rerank_fn: Callable[..., torch.Tensor] | None = None,
                         shortlist: int | tuple[int, int] | None = None, sims: Any = None, backend: str = "exact",
                         faiss_k: int = 100, faiss_options: dict | None = None,
                         chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                         curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Cross-modal, uni-modal and mixed retrieval metrics from embeddings or a score function.

    Cheap enough for every epoch on a dev split with the default arguments (i2t and t2i by
    chunked counting; the relevance is read only when a scenario needs it).

    Args:
        img_emb, txt_emb: ``[n_images, d]`` and ``[n_texts, d]`` L2-normalised embeddings
            (torch or numpy, CPU or CUDA); may be None (or the method's dict outputs) with
            ``score_fn``.
        split_or_arrays: a :class:`~featvlr.store.StoreSplit`, a mapping with ``txt2img``
            (``[n_texts]``) and optionally ``relevance`` (``[n_texts, n_images]``), or None
            (``c // 5`` captions; no relevance).
        scenarios: names from :data:`SCENARIOS` (not ``composed``); None = i2t, t2i and, when
            relevance exists and embeddings are given, the uni-modal and mixed ones.
        folds: 1, 5 or ``(1, 5)`` (COCO 5K and 1K); applies to i2t/t2i.
        ks: Recall@K cut-offs. ndcg_ks: linear-gain NDCG cut-offs; ndcg_exp_k: the
            exponential-gain one (also TERAN's, for i2t/t2i when ``teran_ndcg``).
        teran_ndcg: add TERAN's NDCG (ROUGE-L, exp gain) to i2t and t2i.
        t2t_without_siblings: also report ``t2t_nosiblings``.
        score_fn: ``score_fn(image_rows, text_rows) -> [n_i, n_t]`` pairwise scores of a
            token-level method (i2t/t2i only). With ``shortlist`` it re-ranks instead.
        sims: a precomputed ``[n_images, n_texts]`` score matrix instead of embeddings
            (i2t/t2i only; e.g. another model's scores).
        rerank_fn: ``rerank_fn(query_rows, candidate_rows, queries)`` -> ``[q, k]`` scores of
            each query's shortlisted candidates (``queries`` is ``"images"`` or ``"texts"``);
            built from ``score_fn`` when omitted.
        shortlist: size of the global shortlist (an int, or ``(i2t, t2i)``), scored by the
            embeddings and re-ranked; a ground truth outside it is a miss.
        backend: ``"exact"`` or ``"faiss-flat"``/``"faiss-ivf"``/``"faiss-hnsw"`` (i2t/t2i
            from top-``faiss_k`` lists: R@K only, K <= faiss_k).
        chunk_elements: most query x gallery scores held at once.
        curves: if a dict is given, it receives R@1..R@50 curves per scenario (for plots).

    Returns:
        ``{"<scenario>/<metric>": value, "rsum": ..., "r_mean": ...}`` (see the module docstring).
    """
    pairwise = score_fn is not None and shortlist is None
    img_is_tensor = img_emb is not None and not isinstance(img_emb, dict)
    sims_t = None
    if sims is not None:
        if img_is_tensor or pairwise:
            raise FeatvlrError("pass either embeddings, a score function or a similarity matrix")
        sims_t = as_tensor(sims)
        if sims_t.ndim != 2:
            raise FeatvlrError(f"the similarity matrix must be [n_images, n_texts], got shape {tuple(sims_t.shape)}")
        check_scores(sims_t)
        data = _SplitData(split_or_arrays, sims_t.shape[0], sims_t.shape[1])
    else:
        data = _SplitData(split_or_arrays, _n_rows(img_emb), _n_rows(txt_emb))
    chosen = parse_scenarios(scenarios)
    if chosen is None:
        chosen = list(CROSS_MODAL)
        if img_is_tensor and not pairwise and data.has_relevance:
            chosen += list(UNI_AND_MIXED)
    if "composed" in chosen:
        raise FeatvlrError("the composed scenario needs query embeddings: use evaluate_composed")
    if backend not in BACKENDS:
        raise FeatvlrError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if not img_is_tensor and not pairwise and sims_t is None:
        raise FeatvlrError("pass image and text embeddings, a score function or a similarity matrix")
    if img_is_tensor and _n_rows(txt_emb) is None:
        raise FeatvlrError("text embeddings are missing")
    if shortlist is not None and score_fn is None and rerank_fn is None:
        raise FeatvlrError("a shortlist needs a re-rank function (rerank_fn or score_fn)")
    if backend != "exact" and (pairwise or shortlist is not None or sims_t is not None):
        raise FeatvlrError("the FAISS backend works on embeddings only")
    if img_is_tensor:
        img_t, txt_t = as_tensor(img_emb), as_tensor(txt_emb)
        if img_t.ndim != 2 or txt_t.ndim != 2 or img_t.shape[1] != txt_t.shape[1]:
            raise FeatvlrError(f"embeddings must be [n, d] with the same d; got images {tuple(img_t.shape)} "
                               f"and texts {tuple(txt_t.shape)}")
        for name, t in (("image", img_t), ("text", txt_t)):
            if not torch.isfinite(t).all():
                raise FeatvlrError(f"the {name} embeddings contain NaN or infinite values")
    else:
        img_t = txt_t = None
    device = img_t.device if img_t is not None else sims_t.device if sims_t is not None else torch.device("cpu")

    results: dict[str, float] = {}
    directions = [d for d in CROSS_MODAL if d in chosen]
    if directions:
        for f in _folds_tuple(folds):
            res = _cross_modal(img_t, txt_t, sims_t, data, f, directions, ks=ks, score_fn=score_fn,
                               rerank_fn=rerank_fn, shortlist=shortlist, backend=backend, faiss_k=faiss_k,
                               faiss_options=faiss_options or {}, teran_ndcg=teran_ndcg,
                               ndcg_exp_k=ndcg_exp_k, chunk_elements=chunk_elements, device=device,
                               curves=curves)
            sfx = _fold_suffix(f)
            for key, value in res.items():
                direction, _, metric = key.partition("_")
                if direction in directions:
                    results[f"{direction}{sfx}/{metric}"] = value
            if len(directions) == 2:
                results[f"rsum{sfx}"] = res["rsum"]
                results[f"r_mean{sfx}"] = res["rsum"] / (2 * len(ks))
    uni = [s for s in chosen if s in UNI_AND_MIXED]
    if uni:
        if img_t is None or pairwise:
            raise FeatvlrError(f"scenario {uni[0]} needs embeddings (a similarity matrix or a pairwise score "
                               "function gives i2t and t2i only)")
        results.update(_uni_and_mixed(img_t, txt_t, data, uni, ndcg_ks=ndcg_ks, ndcg_exp_k=ndcg_exp_k,
                                      t2t_without_siblings=t2t_without_siblings, chunk_elements=chunk_elements))
    return results


def _cross_modal(img, txt, sims, data: _SplitData, folds: int, directions: list[str], *, ks, score_fn, rerank_fn,
                 shortlist, backend, faiss_k, faiss_options, teran_ndcg, ndcg_exp_k, chunk_elements, device,
                 curves) -> dict[str, float]:
    """``{d}_R@K``, ``{d}_medr``, ``{d}_meanr`` (and TERAN NDCG) per direction, averaged over
    folds; ``rsum`` when both directions are asked for."""
    t2i_all = data.txt2img
    rel = data.relevance("i2t/t2i NDCG") if teran_ndcg else None
    per_fold: list[dict[str, float]] = []
    curve_parts: dict[str, list[list[float]]] = {d: [] for d in directions}
    sl = (shortlist, shortlist) if isinstance(shortlist, int) else shortlist
    for lo, hi in fold_ranges(data.n_images, folds):
        if folds == 1:
            img_idx = txt_idx = None
            local = t2i_all
        else:
            txt_idx = fold_texts(t2i_all, lo, hi)
            img_idx = np.arange(lo, hi)
            local = t2i_all[txt_idx] - lo
        positives = {"i2t": group_positives(local, hi - lo).to(device), "t2i": torch.as_tensor(local, device=device)}
        sources = _cross_sources(img, txt, sims, data, img_idx, txt_idx, score_fn, rerank_fn, sl, device)
        res: dict[str, float] = {}
        for d in directions:
            if backend != "exact":
                i_sub = img if img_idx is None else img[torch.as_tensor(img_idx, device=img.device)]
                t_sub = txt if txt_idx is None else txt[torch.as_tensor(txt_idx, device=txt.device)]
                q, g = (i_sub, t_sub) if d == "i2t" else (t_sub, i_sub)
                _, ids = faiss_search(q, g, faiss_k, index=backend.split("-", 1)[1], **faiss_options)
                r = ranks_from_topk(ids, positives[d].cpu())
                res.update(recall_from_ranks(r, [k for k in ks if k <= faiss_k], prefix=f"{d}_", with_ranks=False))
            else:
                r = ranks(sources[d], positives[d], chunk_elements=chunk_elements)
                res.update(recall_from_ranks(r, ks, prefix=f"{d}_"))
            curve_parts[d].append(recall_curve(r))
            if rel is not None:
                res.update(_teran_ndcg(sources[d], d, rel, img_idx, txt_idx, ndcg_exp_k, chunk_elements))
        if len(directions) == 2:
            res["rsum"] = float(sum(v for k, v in res.items() if "_R@" in k))
        per_fold.append(res)
    if curves is not None:
        for d, parts in curve_parts.items():
            curves[f"{d}{_fold_suffix(folds)}"] = [float(x) for x in np.mean(np.asarray(parts), axis=0)]
    return average_folds(per_fold)


def _cross_sources(img, txt, sims, data, img_idx, txt_idx, score_fn, rerank_fn, shortlist,
                   device) -> dict[str, ScoreSource]:
    if img is not None or sims is not None:
        out: dict[str, ScoreSource]
        if sims is not None:
            out = {"i2t": DenseScores(sims, by="rows", query_index=img_idx, gallery_index=txt_idx, checked=True),
                   "t2i": DenseScores(sims, by="cols", query_index=txt_idx, gallery_index=img_idx, checked=True)}
        else:
            i_sub = img if img_idx is None else img[torch.as_tensor(img_idx, device=img.device)]
            t_sub = txt if txt_idx is None else txt[torch.as_tensor(txt_idx, device=txt.device)]
            out = {"i2t": EmbeddingScores(i_sub, t_sub), "t2i": EmbeddingScores(t_sub, i_sub)}
        if shortlist is None:
            return out
        i_ids = torch.arange(data.n_images) if img_idx is None else torch.as_tensor(img_idx)
        t_ids = torch.arange(data.n_texts) if txt_idx is None else torch.as_tensor(txt_idx)
        for direction, (q_ids, g_ids), k in (("i2t", (i_ids, t_ids), shortlist[0]), ("t2i", (t_ids, i_ids), shortlist[1])):
            queries = "images" if direction == "i2t" else "texts"
            if rerank_fn is not None:
                fn = (lambda q, c, _queries=queries: rerank_fn(q, c, _queries))
            else:
                fn = rerank_from_score_fn(score_fn, queries=queries)
            out[direction] = ShortlistRerankScores(out[direction], fn, k, query_ids=q_ids, gallery_ids=g_ids)
        return out
    return {d: PairwiseScores(score_fn, data.n_images, data.n_texts, queries=q, image_index=img_idx,
                              text_index=txt_idx, device=device)
            for d, q in (("i2t", "images"), ("t2i", "texts"))}


def _teran_ndcg(source: ScoreSource, direction: str, rel: torch.Tensor, img_idx, txt_idx, k: int,
                chunk_elements: int) -> dict[str, float]:
    """TERAN's NDCG@k, exp gain: t2i rel = R[q, fold images]; i2t rel = R[fold captions, i]
    (also averaged over the non-zero values only, as TERAN's i2t does)."""
    dev = source.device
    if img_idx is not None:
        rel = rel[torch.as_tensor(txt_idx)][:, torch.as_tensor(img_idx)]

    def rows(a: int, b: int) -> torch.Tensor:
        return (rel[:, a:b].t() if direction == "i2t" else rel[a:b]).to(dev)

    key = ndcg_key("exp", k)
    v = ndcg_multi(source, rows, [(k, "exp")], chunk_elements=chunk_elements)[(k, "exp")].numpy()
    out = {f"{direction}_{key}": float(v.mean())}
    if direction == "i2t":
        nonzero = v[v != 0]
        out[f"i2t_{key}_nonzero"] = float(nonzero.mean()) if len(nonzero) else 0.0
    return out


# --------------------------------------------------------------------------------------
# uni-modal and mixed NDCG


def _uni_and_mixed(img: torch.Tensor, txt: torch.Tensor, data: _SplitData, scenarios: list[str], *,
                   ndcg_ks, ndcg_exp_k, t2t_without_siblings, chunk_elements) -> dict[str, float]:
    R = data.relevance(scenarios[0])  # [n_texts, n_images], caption x image
    dev = img.device
    first = first_captions(data.txt2img, data.n_images)
    q_img = torch.as_tensor(np.nonzero(first >= 0)[0])  # images with a caption can be queries
    q_cap = torch.as_tensor(first[q_img.numpy()])
    if len(q_img) == 0:
        raise FeatvlrError("no image has a caption: the uni-modal scenarios have no queries")
    specs = [(k, "linear") for k in ndcg_ks] + [(ndcg_exp_k, "exp")]

    def rel_img_img(a: int, b: int) -> torch.Tensor:  # R[first(a), :]
        return R[q_cap[a:b]]

    def rel_img_cap(a: int, b: int) -> torch.Tensor:  # R[:, a].T
        return R[:, q_img[a:b]].t()

    plans: list[tuple[str, torch.Tensor, torch.Tensor, Callable[[int, int], torch.Tensor], torch.Tensor]] = []
    for name in scenarios:
        if name == "i2i":
            plans.append((name, img[q_img.to(dev)], img, rel_img_img, q_img))
        elif name == "t2t":
            plans.append((name, txt[q_cap.to(dev)], txt, rel_img_cap, q_cap))
            if t2t_without_siblings:
                siblings = group_positives(data.txt2img, data.n_images)[q_img]
                plans.append(("t2t_nosiblings", txt[q_cap.to(dev)], txt, rel_img_cap, siblings))
        elif name == "i2it":
            plans.append((name, img[q_img.to(dev)], torch.cat([img, txt]),
                          lambda a, b: torch.cat([rel_img_img(a, b), rel_img_cap(a, b)], dim=1), q_img))
        elif name == "t2it":
            plans.append((name, txt[q_cap.to(dev)], torch.cat([txt, img]),
                          lambda a, b: torch.cat([rel_img_cap(a, b), rel_img_img(a, b)], dim=1), q_cap))
    out: dict[str, float] = {}
    for name, queries, gallery, rel_fn, exclude in plans:
        src = EmbeddingScores(queries, gallery)
        vals = ndcg_multi(src, lambda a, b, _f=rel_fn: _f(a, b).to(dev), specs, exclude=exclude.to(dev),
                          chunk_elements=chunk_elements)
        for (k, gain), v in vals.items():
            out[f"{name}/{ndcg_key(gain, k)}"] = float(v.mean())
    return out


# --------------------------------------------------------------------------------------
# composed retrieval


def composed_protocol(composed: Mapping[str, Any]) -> str:
    """``"cirr"`` (image sets), ``"fashioniq"`` (categories) or ``"shoes"``, from the arrays."""
    if "subsets" in composed:
        return "cirr"
    if "category" in composed:
        return "fashioniq"
    return "shoes"


def _cirr_means(res: dict[str, float]) -> dict[str, float]:
    seven = [res[k] for k in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3")]
    positive = min(seven) > 0
    return {
        "recall_avg": (res["R@5"] + res["Rsubset@1"]) / 2,
        "arithmetic_mean": float(np.mean(seven)),
        "harmonic_mean": float(len(seven) / sum(1.0 / v for v in seven)) if positive else 0.0,
        "geometric_mean": float(math.exp(np.mean([math.log(v) for v in seven]))) if positive else 0.0,
    }


def evaluate_composed(query_emb: Any, gallery_emb: Any, composed: Mapping[str, Any], *, protocol: str = "auto",
                      chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                      curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Composed image retrieval metrics of one split (one gallery), ``METHODS.md`` section 2.4.

    Args:
        query_emb: ``[n_queries, d]`` composed (reference + modifier) query embeddings.
        gallery_emb: ``[n_images, d]`` embeddings of the split's images (the gallery).
        composed: the split's ``composed()`` arrays: ``target`` and ``reference`` (image rows;
            target ``-1`` = unknown, skipped), ``subsets`` ``[n_queries, 6]`` (CIRR image
            sets, ``-1`` pads), ``category`` (FashionIQ).
        protocol: ``"cirr"`` (reference removed; Rsubset@K), ``"shoes"`` (reference
            removed), ``"fashioniq"`` (reference kept) or ``"auto"`` (from the arrays).

    Returns (percent, keys prefixed ``composed/``):
        CIRR: ``R@1/5/10/50``, ``Rsubset@1/2/3``, ``recall_avg`` = (R@5 + Rsubset@1) / 2 and
        the ``arithmetic_mean``/``harmonic_mean``/``geometric_mean`` of the 7 recalls. Shoes:
        ``R@1/10/50`` and ``recall_mean``. FashionIQ: ``R@10``, ``R@50`` and
        ``average_recall`` = (R@10 + R@50) / 2, with ``<category>_R@10``/``_R@50`` when the
        split has categories (FashionIQ's per-category galleries are separate splits; average
        them with :func:`average_fashioniq`). Empty when no query has a target (CIRR test:
        see :func:`cirr_submission`).
    """
    protocol = composed_protocol(composed) if protocol == "auto" else protocol
    if protocol not in ("cirr", "shoes", "fashioniq"):
        raise FeatvlrError(f"unknown composed protocol {protocol!r} (cirr, fashioniq, shoes)")
    q = as_tensor(query_emb)
    g = as_tensor(gallery_emb, device=q.device)
    target = composed.get("target")
    if target is None or len(target) != q.shape[0]:
        raise FeatvlrError(f"the composed split has {0 if target is None else len(target)} targets for "
                           f"{q.shape[0]} query embeddings")
    target = as_index(target).cpu()
    rows = torch.nonzero(target >= 0).flatten()
    if len(rows) == 0:
        return {}
    src = EmbeddingScores(q[rows.to(q.device)], g)
    tgt = target[rows]
    ref = None
    if protocol in ("cirr", "shoes") and composed.get("reference") is not None:
        ref = as_index(composed["reference"]).cpu()[rows]
    main = ranks(src, tgt, exclude=ref, chunk_elements=chunk_elements)
    if curves is not None:
        curves["composed"] = recall_curve(main)
    if protocol == "cirr":
        sub = None
        if composed.get("subsets") is not None:
            sub = ranks_within(src, tgt, as_index(composed["subsets"]).cpu()[rows], exclude=ref,
                               chunk_elements=chunk_elements)
        res = composed_summary(main, (1, 5, 10, 50), sub, (1, 2, 3))
        if sub is not None:
            res.update(_cirr_means(res))
    elif protocol == "shoes":
        res = composed_summary(main, (1, 10, 50))
        res["recall_mean"] = (res["R@1"] + res["R@10"] + res["R@50"]) / 3
    else:
        res = composed_summary(main, (10, 50))
        res["average_recall"] = (res["R@10"] + res["R@50"]) / 2
        if composed.get("category") is not None:
            cats = np.asarray(composed["category"]).astype(str)[rows.numpy()]
            r = main.numpy()
            for cat in sorted(set(cats.tolist())):
                sel = r[cats == cat]
                res[f"{cat}_R@10"] = float(100.0 * np.mean(sel < 10))
                res[f"{cat}_R@50"] = float(100.0 * np.mean(sel < 50))
    res["n_queries"] = float(len(rows))
    return {f"composed/{k}": float(v) for k, v in res.items()}


def average_fashioniq(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """FashionIQ summary over per-category results (each from :func:`evaluate_composed` on the
    category's own split): ``composed/<cat>_R@10``, ``composed/<cat>_R@50``, their means
    ``composed/R@10``, ``composed/R@50`` and ``composed/average_recall``."""
    out: dict[str, float] = {}
    for cat, res in per_category.items():
        out[f"composed/{cat}_R@10"] = res["composed/R@10"]
        out[f"composed/{cat}_R@50"] = res["composed/R@50"]
    r10 = [res["composed/R@10"] for res in per_category.values()]
    r50 = [res["composed/R@50"] for res in per_category.values()]
    if r10:
        out["composed/R@10"], out["composed/R@50"] = float(np.mean(r10)), float(np.mean(r50))
        out["composed/average_recall"] = (out["composed/R@10"] + out["composed/R@50"]) / 2
    return out


def cirr_submission(query_emb: Any, gallery_emb: Any, composed: Mapping[str, Any], image_names: Sequence[str], *,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two CIRR test-server files: top-50 names with the reference removed, and the top-3
    names among the image set's members other than the reference; pair ids as strings."""
    q = as_tensor(query_emb)
    g = as_tensor(gallery_emb, device=q.device)
    names = np.asarray(list(image_names), dtype=object)
    if len(names) != g.shape[0]:
        raise FeatvlrError(f"{len(names)} image names for {g.shape[0]} gallery embeddings")
    for key in ("reference", "subsets", "pair_ids"):
        if key not in composed:
            raise FeatvlrError(f"a CIRR submission needs composed/{key}")
    reference = as_index(composed["reference"])
    members = as_index(composed["subsets"])
    pair_ids = [str(p.decode() if isinstance(p, bytes) else p) for p in np.asarray(composed["pair_ids"]).tolist()]
    if not (len(reference) == len(members) == len(pair_ids) == q.shape[0]):
        raise FeatvlrError("composed reference/subsets/pair_ids and the query embeddings disagree in length")
    src = EmbeddingScores(q, g)
    # k below the gallery size: with 50 or fewer images the excluded reference would fill the last slot
    _, top = topk(src, min(50, g.shape[0] - 1), exclude=reference, chunk_elements=chunk_elements)
    # subset: members other than the reference (and -1 pads) drop to -inf, then top-3
    sub_idx = []
    mem = members.to(q.device)
    ref = reference.to(q.device)
    for start, stop, block in iter_blocks(src, chunk_elements):
        m = mem[start:stop]
        s = block.gather(1, m.clamp(min=0)).masked_fill((m < 0) | (m == ref[start:stop, None]), float("-inf"))
        n_valid = int(((m >= 0) & (m != ref[start:stop, None])).sum(1).min())
        order = torch.topk(s, min(3, n_valid, s.shape[1]), dim=1).indices
        sub_idx.append(m.gather(1, order).cpu())
    sub = torch.cat(sub_idx)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for i, pid in enumerate(pair_ids):
        row = top[i].numpy()
        recall[pid] = names[row[(row >= 0) & (row != int(reference[i]))]].tolist()
        subset[pid] = names[sub[i].numpy()].tolist()
    return recall, subset


def write_cirr_submission(out_dir: str | Path, recall: dict[str, Any], subset: dict[str, Any],
                          name: str = "featvlr") -> tuple[Path, Path]:
    """Write ``recall_submission_<name>.json`` and ``recall_subset_submission_<name>.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"recall_submission_{name}.json", out_dir / f"recall_subset_submission_{name}.json")
    for path, obj in zip(paths, (recall, subset)):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(obj), encoding="utf-8")
        tmp.replace(path)
    return paths


# --------------------------------------------------------------------------------------
# methods


def _take_rows(out: Any, rows: torch.Tensor) -> Any:
    if isinstance(out, dict):
        return {k: v.index_select(0, rows.to(v.device)) for k, v in out.items()}
    return out.index_select(0, rows.to(out.device))


def pairwise_score_fn(method: Any, images: Any, texts: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn(image_rows, text_rows)`` over a pairwise method's encoder outputs."""

    @torch.no_grad()
    def score(img_rows: torch.Tensor, txt_rows: torch.Tensor) -> torch.Tensor:
        return method.score(_take_rows(images, img_rows), _take_rows(texts, txt_rows))

    return score


def evaluate_method(method: Any, split: Any, scenarios: str | Sequence[str] | None = None,
                    folds: int | Sequence[int] = 1, *, batch_size: int = 512, device: str | torch.device = "cpu",
                    teran_ndcg: bool = True, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                    curves: dict[str, list[float]] | None = None, submission_dir: str | Path | None = None,
                    protocol: str = "auto", max_tokens: int = 0, **kwargs: Any) -> dict[str, float]:
    """Embed a store split with a method and evaluate it (``max_tokens``: the training
    truncation of captions, ``data.max_tokens``).

    Cross-modal methods: :func:`~featvlr.retrieval.embed_split`, then
    :func:`evaluate_cross_modal`. A method with ``shortlist_plan(images, texts)`` (GLS)
    says how to rank: ``None`` scores every pair with ``method.score`` block by block;
    ``{"images", "texts"}`` gives global embeddings, optionally with ``"shortlist"`` and
    ``"rerank_fn"`` for global shortlist then re-rank. Other pairwise methods go through
    ``method.score`` (i2t/t2i only).

    Composed methods: :func:`featvlr.data_composed.embed_composed_split`, then
    :func:`evaluate_composed` (``protocol``); on a CIRR split without targets (test1) the
    two submission files are written to ``submission_dir`` when it is given.

    ``scenarios=None`` (or ``"all"``) runs every scenario the method and split allow; other
    keyword arguments go to :func:`evaluate_cross_modal`.
    """
    chosen = parse_scenarios(scenarios)
    if getattr(method, "task", "cross_modal") == "composed":
        from featvlr.data_composed import embed_composed_split

        if chosen is not None and chosen != ["composed"]:
            raise FeatvlrError(f"a composed method has only the composed scenario, not {', '.join(chosen)}")
        comp = split.composed()
        if not comp:
            raise InputError(split.store.path, f"split {split.name!r} has no composed data")
        queries, gallery = embed_composed_split(method, split, batch_size=batch_size, device=device)
        res = evaluate_composed(queries, gallery, comp, protocol=protocol, chunk_elements=chunk_elements,
                                curves=curves)
        if submission_dir is not None and "subsets" in comp and not res:
            recall, subset = cirr_submission(queries, gallery, comp, split.image_ids(), chunk_elements=chunk_elements)
            write_cirr_submission(submission_dir, recall, subset, name=split.name)
        return res
    if chosen is not None and "composed" in chosen:
        raise FeatvlrError("the composed scenario needs a composed method")
    images, texts = embed_split(method, split, batch_size=batch_size, device=device, max_tokens=max_tokens)
    teran = teran_ndcg and split.has(f"relevance/{split.name}/rougeL")
    common = dict(teran_ndcg=teran, chunk_elements=chunk_elements, curves=curves, **kwargs)
    if hasattr(method, "shortlist_plan"):
        plan = method.shortlist_plan(images, texts)
        if plan is not None:
            if plan.get("shortlist") is not None and chosen is None:
                chosen = list(CROSS_MODAL)
            return evaluate_cross_modal(plan["images"], plan["texts"], split, chosen, folds,
                                        shortlist=plan.get("shortlist"), rerank_fn=plan.get("rerank_fn"), **common)
    if getattr(method, "pairwise", False) or isinstance(images, dict):
        return evaluate_cross_modal(images, texts, split, chosen or list(CROSS_MODAL), folds,
                                    score_fn=pairwise_score_fn(method, images, texts), **common)
    return evaluate_cross_modal(images, texts, split, chosen, folds, **common)
