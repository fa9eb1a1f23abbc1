"""A cross-modal method's scores on a store split: every pair by ``method.score``
(:func:`pairwise_score_fn`, for :class:`~featvlr.evaluation.evaluators.CrossModalEvaluator`
and ensembles), and the per-query ranks kept for paired significance tests."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.core.fileio import atomic_path
from featvlr.evaluation.embed import embed_split
from featvlr.evaluation.options import EvalOptions
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
