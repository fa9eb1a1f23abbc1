"""Cross-modal retrieval (i2t, t2i) from embeddings, a pairwise score function, a shortlist
plan or a similarity matrix (:class:`CrossModalScores`), under the options of
:class:`~featvlr.evaluation.options.EvalOptions` (:func:`cross_modal_metrics`); the uni-modal
and mixed NDCG scenarios come from :mod:`featvlr.evaluation.unimodal`. Protocols:
:mod:`featvlr.evaluation.scenarios`."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.options import BACKENDS, CROSS_MODAL, UNI_AND_MIXED, EvalOptions, parse_scenarios
from featvlr.evaluation.split_data import SplitData, n_rows
from featvlr.evaluation.unimodal import uni_and_mixed
from featvlr.retrieval import (
    DEFAULT_CHUNK_ELEMENTS,
    DenseScores,
    EmbeddingScores,
    PairwiseScores,
    ScoreSource,
    ShortlistRerankScores,
    as_tensor,
    check_scores,
    faiss_search,
    group_positives,
    ndcg_multi,
    ranks,
    ranks_from_topk,
    rerank_from_score_fn,
)
from featvlr.retrieval.metrics import average_folds, fold_texts, iter_folds, ndcg_key, recall_curve, recall_from_ranks
from featvlr.retrieval.relevance import kind_suffix


def _folds_tuple(folds: int | Sequence[int]) -> tuple[int, ...]:
    return (int(folds),) if isinstance(folds, (int, np.integer)) else tuple(int(f) for f in folds)


def _fold_suffix(f: int) -> str:
    return "" if f == 1 else f"_{f}fold"


def first_suffix(n: int) -> str:
    """Metric-name suffix of the first ``n`` images: ``_first1k`` (n = 1000), ``_first500``."""
    return f"_first{n // 1000}k" if n % 1000 == 0 else f"_first{n}"


def _first_block(txt2img: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """The one block of images ``[0, n)`` and their texts, as :func:`iter_folds` yields a fold."""
    txt_idx = fold_texts(txt2img, 0, n)
    return [(np.arange(n), txt_idx, txt2img[txt_idx], n)]


@dataclasses.dataclass(frozen=True)
class CrossModalScores:
    """What scores the image-text pairs of a split, one of: embeddings (``images`` ``[n_images, d]``,
    ``texts`` ``[n_texts, d]``, L2-normalised, torch or numpy), a pairwise ``score_fn(image_rows,
    text_rows) -> [n_i, n_t]`` (i2t/t2i only; ``images``/``texts`` may then be a method's dict
    outputs), embeddings whose global ``shortlist`` (an int, or ``(i2t, t2i)``) is re-ranked by
    ``rerank_fn(query_rows, candidate_rows, queries) -> [q, k]`` (built from ``score_fn`` when
    omitted; a ground truth outside the shortlist is a miss), or a precomputed ``sims``
    ``[n_images, n_texts]`` matrix (i2t/t2i only)."""

    images: Any = None
    texts: Any = None
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    rerank_fn: Callable[..., torch.Tensor] | None = None
    shortlist: int | tuple[int, int] | None = None
    sims: Any = None


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """Checked :class:`CrossModalScores` of one split: tensors, the split's arrays, the device."""

    img: torch.Tensor | None
    txt: torch.Tensor | None
    sims: torch.Tensor | None
    data: SplitData
    scores: CrossModalScores
    pairwise: bool
    device: torch.device

    @property
    def shortlist(self) -> tuple[int, int] | None:
        sl = self.scores.shortlist
        return (sl, sl) if isinstance(sl, int) else sl


def evaluate_cross_modal(img_emb: Any, txt_emb: Any, split_or_arrays: Any = None,
                         scenarios: str | Sequence[str] | None = CROSS_MODAL, folds: int | Sequence[int] = 1, *,
                         ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = (10, 20, 50),
                         ndcg_exp_k: int = 25, teran_ndcg: bool = False, t2t_without_siblings: bool = False,
                         score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                         rerank_fn: Callable[..., torch.Tensor] | None = None,
                         shortlist: int | tuple[int, int] | None = None, sims: Any = None, backend: str = "exact",
                         faiss_k: int = 100, faiss_options: dict | None = None,
                         chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, first_images: int = 0,
                         curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """:func:`cross_modal_metrics` with the scores (:class:`CrossModalScores`) and the options
    (:class:`~featvlr.evaluation.options.EvalOptions`) given one by one, for protocol tests
    and scripts; unlike ``EvalOptions``, TERAN's NDCG is off unless asked for."""
    if backend not in BACKENDS:
        raise FeatvlrError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    options = EvalOptions(folds=_folds_tuple(folds), first_images=int(first_images), ks=tuple(ks),
                          ndcg_ks=tuple(ndcg_ks), ndcg_exp_k=ndcg_exp_k, teran_ndcg=teran_ndcg,
                          t2t_without_siblings=t2t_without_siblings, backend=backend, faiss_k=faiss_k,
                          faiss_options=faiss_options, chunk_elements=chunk_elements)
    scores = CrossModalScores(images=img_emb, texts=txt_emb, score_fn=score_fn, rerank_fn=rerank_fn,
                              shortlist=shortlist, sims=sims)
    return cross_modal_metrics(scores, split_or_arrays, scenarios, options, curves=curves)


def cross_modal_metrics(scores: CrossModalScores, split_or_arrays: Any, scenarios: str | Sequence[str] | None,
                        options: EvalOptions, *, curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Cross-modal, uni-modal and mixed retrieval metrics of ``scores`` on one split.

    Cheap enough for every epoch on a dev split (i2t and t2i by chunked counting; the
    relevance is read only when a scenario needs it).

    Args:
        scores: embeddings, a score function, a shortlist plan or a similarity matrix
            (:class:`CrossModalScores`).
        split_or_arrays: a :class:`~featvlr.cache.store.StoreSplit`, a mapping with ``txt2img``
            (``[n_texts]``) and optionally ``relevance`` (``[n_texts, n_images]``), or None
            (``c // 5`` captions; no relevance).
        scenarios: names from :data:`SCENARIOS` (not ``composed``); None = i2t, t2i and, when
            relevance exists and embeddings are given, the uni-modal and mixed ones.
        options: the protocol (:class:`~featvlr.evaluation.options.EvalOptions`): ``folds``
            (i2t/t2i; ``(1, 5)``: COCO 5K and 1K), ``ks``, ``ndcg_ks``, ``ndcg_exp_k``,
            ``teran_ndcg`` (TERAN's NDCG, ROUGE-L, exp gain, on i2t and t2i),
            ``t2t_without_siblings``, ``backend``/``faiss_k``/``faiss_options`` (FAISS: i2t/t2i
            from top-``faiss_k`` lists, R@K only, embeddings only), ``chunk_elements``, and
            ``first_images``: also every asked scenario on the first N images and their texts
            alone (RVLR's and CoVLR's "COCO 1K", ``R[:5000, :1000]``; keys ``*_first1k``;
            0, or a split with fewer images: none).
        curves: if a dict is given, it receives R@1..R@50 curves per scenario (for plots).

    Returns:
        ``{"<scenario>/<metric>": value, "rsum": ..., "r_mean": ...}`` (:mod:`featvlr.evaluation.scenarios`).
    """
    inputs, chosen = _checked(scores, split_or_arrays, scenarios, options)
    results: dict[str, float] = {}
    first = int(options.first_images) if 0 < int(options.first_images) <= inputs.data.n_images else 0
    directions = [d for d in CROSS_MODAL if d in chosen]
    if directions:
        results.update(_direction_metrics(inputs, directions, options, first, curves))
    uni = [s for s in chosen if s in UNI_AND_MIXED]
    if uni:
        if inputs.img is None or inputs.pairwise:
            raise FeatvlrError(f"scenario {uni[0]} needs embeddings (a similarity matrix or a pairwise score "
                               "function gives i2t and t2i only)")
        results.update(_uni_metrics(inputs, uni, options, first))
    return results


def _checked(scores: CrossModalScores, split_or_arrays: Any, scenarios: str | Sequence[str] | None,
             options: EvalOptions) -> tuple[_Inputs, list[str]]:
    """The checked inputs and the scenarios to run (None: every one the inputs allow)."""
    pairwise = scores.score_fn is not None and scores.shortlist is None
    img_is_tensor = scores.images is not None and not isinstance(scores.images, dict)
    sims_t = None
    if scores.sims is not None:
        if img_is_tensor or pairwise:
            raise FeatvlrError("pass either embeddings, a score function or a similarity matrix")
        sims_t = as_tensor(scores.sims)
        if sims_t.ndim != 2:
            raise FeatvlrError(f"the similarity matrix must be [n_images, n_texts], got shape {tuple(sims_t.shape)}")
        check_scores(sims_t)
        data = SplitData(split_or_arrays, sims_t.shape[0], sims_t.shape[1])
    else:
        data = SplitData(split_or_arrays, n_rows(scores.images), n_rows(scores.texts))
    chosen = parse_scenarios(scenarios)
    if chosen is None:
        chosen = list(CROSS_MODAL)
        if img_is_tensor and not pairwise and data.has_relevance:
            chosen += list(UNI_AND_MIXED)
    if "composed" in chosen:
        raise FeatvlrError("the composed scenario needs query embeddings: use evaluate_composed")
    if not img_is_tensor and not pairwise and sims_t is None:
        raise FeatvlrError("pass image and text embeddings, a score function or a similarity matrix")
    if img_is_tensor and n_rows(scores.texts) is None:
        raise FeatvlrError("text embeddings are missing")
    if scores.shortlist is not None and scores.score_fn is None and scores.rerank_fn is None:
        raise FeatvlrError("a shortlist needs a re-rank function (rerank_fn or score_fn)")
    if options.backend != "exact" and (pairwise or scores.shortlist is not None or sims_t is not None):
        raise FeatvlrError("the FAISS backend works on embeddings only")
    img_t, txt_t = _embedding_tensors(scores) if img_is_tensor else (None, None)
    device = img_t.device if img_t is not None else sims_t.device if sims_t is not None else torch.device("cpu")
    return _Inputs(img_t, txt_t, sims_t, data, scores, pairwise, device), chosen


def _embedding_tensors(scores: CrossModalScores) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, texts)`` as tensors: ``[n, d]`` with the same ``d``, finite."""
    img_t, txt_t = as_tensor(scores.images), as_tensor(scores.texts)
    if img_t.ndim != 2 or txt_t.ndim != 2 or img_t.shape[1] != txt_t.shape[1]:
        raise FeatvlrError(f"embeddings must be [n, d] with the same d; got images {tuple(img_t.shape)} "
                           f"and texts {tuple(txt_t.shape)}")
    for name, t in (("image", img_t), ("text", txt_t)):
        if not torch.isfinite(t).all():
            raise FeatvlrError(f"the {name} embeddings contain NaN or infinite values")
    return img_t, txt_t


def _direction_metrics(inputs: _Inputs, directions: list[str], options: EvalOptions, first: int,
                       curves: dict[str, list[float]] | None) -> dict[str, float]:
    """i2t and t2i on every fold count of ``options.folds`` (and the first images' block)."""
    results: dict[str, float] = {}
    blocks: list[tuple[str, Any]] = [(_fold_suffix(f), f) for f in options.folds]
    if first:
        blocks.append((first_suffix(first), _first_block(inputs.data.txt2img, first)))
    for sfx, f in blocks:
        res = _fold_metrics(inputs, f, directions, options, curves, sfx)
        for key, value in res.items():
            direction, _, metric = key.partition("_")
            if direction in directions:
                results[f"{direction}{sfx}/{metric}"] = value
        if len(directions) == 2:
            results[f"rsum{sfx}"] = res["rsum"]
            results[f"r_mean{sfx}"] = res["rsum"] / (2 * len(options.ks))
    return results


def _uni_metrics(inputs: _Inputs, uni: list[str], options: EvalOptions, first: int) -> dict[str, float]:
    """The uni-modal and mixed scenarios (:mod:`featvlr.evaluation.unimodal`), on the whole
    split and on the first images' block."""
    img_t, txt_t, data = inputs.img, inputs.txt, inputs.data
    common = dict(ndcg_ks=options.ndcg_ks, ndcg_exp_k=options.ndcg_exp_k,
                  t2t_without_siblings=options.t2t_without_siblings, chunk_elements=options.chunk_elements)
    results = uni_and_mixed(img_t, txt_t, data, uni, **common)
    if first:
        img_idx, txt_idx, local, _ = _first_block(data.txt2img, first)[0]
        rel = data.relevance(uni[0])[torch.as_tensor(txt_idx)][:, :first]
        sub = SplitData({"txt2img": local, "relevance": rel}, first, len(txt_idx))
        res = uni_and_mixed(img_t[:first], txt_t[torch.as_tensor(txt_idx, device=txt_t.device)], sub, uni, **common)
        sfx = first_suffix(first)
        results.update({f"{k.split('/', 1)[0]}{sfx}/{k.split('/', 1)[1]}": v for k, v in res.items()})
    return results


def _fold_metrics(inputs: _Inputs, folds: int | list, directions: list[str], options: EvalOptions,
                  curves: dict[str, list[float]] | None, suffix: str) -> dict[str, float]:
    """``{d}_R@K``, ``{d}_medr``, ``{d}_meanr`` (and TERAN NDCG) per direction, averaged over
    folds (an int: :func:`iter_folds`; or a list of blocks as it yields them); ``rsum`` when
    both directions are asked for."""
    data, device, ks = inputs.data, inputs.device, options.ks
    rels: dict[str, torch.Tensor] = {}
    if options.teran_ndcg:
        kinds = data.relevance_kinds() or ["rougeL"]  # none: ROUGE-L's error names what is missing
        rels = {kind: data.relevance_of(kind, "i2t/t2i NDCG") for kind in kinds}
    per_fold: list[dict[str, float]] = []
    curve_parts: dict[str, list[list[float]]] = {d: [] for d in directions}
    blocks = iter_folds(data.txt2img, data.n_images, folds) if isinstance(folds, int) else folds
    for img_idx, txt_idx, local, n_fold in blocks:
        positives = {"i2t": group_positives(local, n_fold).to(device), "t2i": torch.as_tensor(local, device=device)}
        sources = cross_score_sources(inputs.img, inputs.txt, inputs.sims, data, img_idx, txt_idx,
                                      inputs.scores.score_fn, inputs.scores.rerank_fn, inputs.shortlist, device)
        res: dict[str, float] = {}
        for d in directions:
            if options.backend != "exact":
                r = _faiss_ranks(inputs, d, img_idx, txt_idx, positives[d], options)
                res.update(recall_from_ranks(r, [k for k in ks if k <= options.faiss_k], prefix=f"{d}_",
                                             with_ranks=False))
            else:
                r = ranks(sources[d], positives[d], chunk_elements=options.chunk_elements)
                res.update(recall_from_ranks(r, ks, prefix=f"{d}_"))
            curve_parts[d].append(recall_curve(r))
            for kind, rel in rels.items():
                part = _teran_ndcg(sources[d], d, rel, img_idx, txt_idx, options.ndcg_exp_k, options.chunk_elements)
                res.update({key + kind_suffix(kind): v for key, v in part.items()})
        if len(directions) == 2:
            res["rsum"] = float(sum(v for k, v in res.items() if "_R@" in k))
        per_fold.append(res)
    if curves is not None:
        for d, parts in curve_parts.items():
            curves[f"{d}{suffix}"] = [float(x) for x in np.mean(np.asarray(parts), axis=0)]
    return average_folds(per_fold)


def _faiss_ranks(inputs: _Inputs, direction: str, img_idx, txt_idx, positives: torch.Tensor,
                 options: EvalOptions) -> torch.Tensor:
    """Ranks of one direction from FAISS top-``faiss_k`` lists."""
    img, txt = inputs.img, inputs.txt
    i_sub = img if img_idx is None else img[torch.as_tensor(img_idx, device=img.device)]
    t_sub = txt if txt_idx is None else txt[torch.as_tensor(txt_idx, device=txt.device)]
    q, g = (i_sub, t_sub) if direction == "i2t" else (t_sub, i_sub)
    _, ids = faiss_search(q, g, options.faiss_k, index=options.backend.split("-", 1)[1],
                          **dict(options.faiss_options or {}))
    return ranks_from_topk(ids, positives.cpu())


def cross_score_sources(img, txt, sims, data, img_idx, txt_idx, score_fn, rerank_fn, shortlist,
                        device) -> dict[str, ScoreSource]:
    """The i2t and t2i score sources of one fold: a dense matrix (``sims``), embeddings, a
    pairwise ``score_fn``, or a global shortlist re-ranked by ``rerank_fn``."""
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
        for direction, (q_ids, g_ids), k in (("i2t", (i_ids, t_ids), shortlist[0]),
                                             ("t2i", (t_ids, i_ids), shortlist[1])):
            queries = "images" if direction == "i2t" else "texts"
            if rerank_fn is not None:
                def fn(q, c, _queries=queries):
                    return rerank_fn(q, c, _queries)
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
