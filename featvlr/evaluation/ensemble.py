"""Ensembles of runs, as VSE-infinity and HREM report them: the mean of the members'
similarity matrices on one split, ranked like any single matrix.

VSE-infinity's ``eval_ensemble`` averages the ``[n_images, n_texts]`` similarity matrices of
two models (``(sims_1 + sims_2) / 2``) and evaluates i2t and t2i on the mean; HREM does the
same. :func:`method_sims` builds a member's matrix with the score it ranks by
(``method.score``, in float32, in blocks of image rows), :func:`mean_sims` averages them,
and the caller evaluates the mean with
:func:`~featvlr.evaluation.cross_modal.evaluate_cross_modal` (``sims=``): every scenario a
similarity matrix allows (i2t and t2i, with the folds, the first-1K block and TERAN's NDCG).
A method that ranks by a global shortlist (GLS ``GL``) enters with its re-rank score for
every pair.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.embed import embed_split
from featvlr.evaluation.methods import pairwise_score_fn
from featvlr.evaluation.options import EvalOptions
from featvlr.evaluation.split_data import n_rows


def method_sims(method: Any, split: Any, options: EvalOptions, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n_images, n_texts]`` float32 scores of a cross-modal method on a store split
    (``method.score`` of every pair, at most about ``options.chunk_elements`` at once)."""
    if getattr(method, "task", "cross_modal") != "cross_modal":
        raise FeatvlrError(f"an ensemble averages cross-modal similarity matrices; "
                           f"{getattr(method, 'name', type(method).__name__)!r} is a {method.task} method")
    with torch.no_grad():
        images, texts = embed_split(method, split, batch_size=options.batch_size, device=device,
                                    max_tokens=options.max_tokens)
        score = pairwise_score_fn(method, images, texts)
        n_img, n_txt = n_rows(images), n_rows(texts)
        step = max(1, options.chunk_elements // max(1, n_txt))
        txt_rows = torch.arange(n_txt)
        blocks = [score(torch.arange(a, min(a + step, n_img)), txt_rows).float() for a in range(0, n_img, step)]
    return torch.cat(blocks) if len(blocks) > 1 else blocks[0]


def mean_sims(sims: Sequence[Any]) -> torch.Tensor:
    """The element-wise mean of same-shaped ``[n_images, n_texts]`` matrices (float32)."""
    if not sims:
        raise FeatvlrError("an ensemble needs at least one similarity matrix")
    total = None
    for i, s in enumerate(sims):
        t = torch.as_tensor(np.asarray(s) if not isinstance(s, torch.Tensor) else s).float()
        if total is not None and t.shape != total.shape:
            raise FeatvlrError(f"member {i + 1} scores a {tuple(t.shape)} matrix, member 1 a {tuple(total.shape)} one: "
                               "an ensemble needs runs evaluated on the same split")
        total = t.clone() if total is None else total.add_(t.to(total.device))
    return total / len(sims)


def check_same_split(first: Any, other: Any, name: str) -> None:
    """Refuse a member whose split has other images, texts or caption -> image index."""
    if (first.n_images, first.n_texts) != (other.n_images, other.n_texts) or \
            not np.array_equal(first.image_index(), other.image_index()):
        raise FeatvlrError(f"{name}: split {other.name!r} has {other.n_images} images and {other.n_texts} texts "
                           f"(or another caption -> image index) where the first member's has {first.n_images} and "
                           f"{first.n_texts}: an ensemble averages matrices of the same split")
