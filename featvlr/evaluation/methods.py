"""Cross-modal evaluation of a method on a store split: embed it, then rank the way the method
says (global embeddings, every pair by ``method.score``, or a shortlist plan), and the
per-query ranks kept for paired significance tests."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.cross_modal import evaluate_cross_modal
from featvlr.evaluation.embed import embed_split
from featvlr.evaluation.geometry import embedding_geometry
from featvlr.evaluation.options import CROSS_MODAL, EvalOptions, parse_scenarios
from featvlr.core.fileio import atomic_path
from featvlr.retrieval import EmbeddingScores, group_positives, ranks


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


def evaluate_cross_modal_method(method: Any, split: Any, scenarios: str | Sequence[str] | None = None,
                                options: EvalOptions | None = None, *, device: str | torch.device = "cpu",
                                curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Embed a store split with a cross-modal method and evaluate it (:func:`evaluate_cross_modal`).

    A method's ``shortlist_plan(images, texts)`` (GLS) says how to rank: ``None`` scores
    every pair with ``method.score`` block by block when the method is ``pairwise``;
    ``{"images", "texts"}`` gives global embeddings, optionally with ``"shortlist"`` and
    ``"rerank_fn"`` for global shortlist then re-rank. Other pairwise methods go through
    ``method.score`` (i2t/t2i only). ``scenarios=None`` (or ``"all"``) runs every scenario
    the method and split allow. TERAN's NDCG is added when ``options.teran_ndcg`` and the
    split has a relevance matrix.
    """
    opts = options or EvalOptions()
    chosen = parse_scenarios(scenarios)
    if chosen is not None and "composed" in chosen:
        raise FeatvlrError("the composed scenario needs a composed method")
    images, texts = embed_split(method, split, batch_size=opts.batch_size, device=device, max_tokens=opts.max_tokens)
    teran = opts.teran_ndcg and bool(split.relevance_kinds())
    common: dict[str, Any] = dict(ks=opts.ks, ndcg_ks=opts.ndcg_ks, ndcg_exp_k=opts.ndcg_exp_k, teran_ndcg=teran,
                                  t2t_without_siblings=opts.t2t_without_siblings, backend=opts.backend,
                                  faiss_k=opts.faiss_k, chunk_elements=opts.chunk_elements,
                                  first_images=opts.first_images, curves=curves)
    plan = method.shortlist_plan(images, texts)
    if plan is not None:
        if plan.get("shortlist") is not None and chosen is None:
            chosen = list(CROSS_MODAL)
        metrics = evaluate_cross_modal(plan["images"], plan["texts"], split, chosen, opts.folds,
                                       shortlist=plan.get("shortlist"), rerank_fn=plan.get("rerank_fn"), **common)
        return _with_geometry(metrics, plan["images"], plan["texts"], split, opts)
    if method.pairwise or isinstance(images, dict):
        return evaluate_cross_modal(images, texts, split, chosen or list(CROSS_MODAL), opts.folds,
                                    score_fn=pairwise_score_fn(method, images, texts), **common)
    return _with_geometry(evaluate_cross_modal(images, texts, split, chosen, opts.folds, **common),
                          images, texts, split, opts)


def _with_geometry(metrics: dict[str, float], images: Any, texts: Any, split: Any,
                   options: EvalOptions) -> dict[str, float]:
    """Add the global embeddings' geometry (:mod:`featvlr.evaluation.geometry`) to ``metrics``."""
    if isinstance(images, torch.Tensor) and isinstance(texts, torch.Tensor) and options.geometry:
        metrics.update(embedding_geometry(images, texts, split.image_index(), block=options.geometry_block))
    return metrics


def save_query_ranks(method: Any, split: Any, options: EvalOptions, device: Any, path: str | Path) -> Path:
    """Per-query 0-based i2t and t2i ranks (whole split), for paired significance tests."""
    path = Path(path)
    with torch.no_grad():
        images, texts = embed_split(method, split, batch_size=options.batch_size, device=device,
                                    max_tokens=options.max_tokens)
        txt2img = torch.as_tensor(split.image_index(), device=images.device)
        i2t = ranks(EmbeddingScores(images, texts), group_positives(txt2img, split.n_images),
                    chunk_elements=options.chunk_elements)
        t2i = ranks(EmbeddingScores(texts, images), txt2img, chunk_elements=options.chunk_elements)
    with atomic_path(path) as tmp:
        np.savez(tmp, i2t=i2t.cpu().numpy(), t2i=t2i.cpu().numpy())
    return path
