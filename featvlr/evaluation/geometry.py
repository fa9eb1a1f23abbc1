"""Geometry of an embedding space: does it still separate, or has it collapsed?

A hardest-negative hinge (VSE++) has a well-known bad fixed point: every image and caption
embedding drifts to one small cap of the sphere, each hardest negative scores as high as its
positive, and the loss sits at ``2 · B · margin`` per batch with almost no gradient. A run
there still prints Recall@K, just a poor one, and any method compared against it looks
good. These diagnostics make the state visible in every run (computed on the dev split at
each epoch, and on the test split at the end):

- ``geometry/img_cos``, ``geometry/txt_cos``: mean cosine between distinct images (between
  distinct captions). Healthy retrieval spaces on real features sit near 0; a collapsed one
  near 1.
- ``geometry/gap``: mean of ``s(positive) − s(hardest negative)`` over both directions,
  within blocks of ``block`` images and their first captions (a training batch's view).
- ``geometry/tied``: share of those anchors whose hardest negative is within ``1e-3`` of
  the positive, i.e. whose hinge term sits at the margin (the plateau).

:func:`collapse_warning` turns them into one sentence, or None.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Above this mean intra-modal cosine a retrieval space is called collapsed.
COLLAPSE_COSINE = 0.8
#: Above this share of hardest negatives tied with their positive the hinge is at its plateau.
COLLAPSE_TIED = 0.2
TIE_TOLERANCE = 1e-3


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine over distinct rows of L2-normalised ``x``, exactly, in O(n·d)."""
    n = x.shape[0]
    if n < 2:
        return float("nan")
    total = x.double().sum(0)
    return float((total @ total - (x.double() ** 2).sum()) / (n * (n - 1)))


def _first_captions(txt2img: np.ndarray, n_images: int) -> np.ndarray:
    """Per image, the index of its first caption (-1 for an image without one)."""
    first = np.full(n_images, -1, dtype=np.int64)
    images, index = np.unique(txt2img, return_index=True)
    first[images] = index
    return first


def embedding_geometry(img: Any, txt: Any, txt2img: Any, *, block: int = 128) -> dict[str, float]:
    """The diagnostics of the module docstring for ``[N, d]`` images and ``[M, d]`` captions
    (L2-normalised) with ``txt2img[m]`` the image of caption m."""
    img = torch.as_tensor(img).detach().float().cpu()
    txt = torch.as_tensor(txt).detach().float().cpu()
    out = {"geometry/img_cos": mean_pairwise_cosine(img), "geometry/txt_cos": mean_pairwise_cosine(txt)}
    first = _first_captions(np.asarray(txt2img), img.shape[0])
    keep = np.flatnonzero(first >= 0)
    gaps: list[torch.Tensor] = []
    for start in range(0, len(keep), block):
        rows = torch.as_tensor(keep[start:start + block])
        if len(rows) < 2:
            continue
        s = img[rows] @ txt[torch.as_tensor(first[keep[start:start + block]])].t()
        pos = s.diag()
        off = s.masked_fill(torch.eye(len(rows), dtype=torch.bool), -float("inf"))
        gaps += [pos - off.max(1).values, pos - off.max(0).values]
    if gaps:
        gap = torch.cat(gaps)
        out["geometry/gap"] = float(gap.mean())
        out["geometry/tied"] = float((gap.abs() < TIE_TOLERANCE).float().mean())
    return out


def collapse_warning(metrics: dict[str, Any], prefix: str = "") -> str | None:
    """One sentence when ``metrics`` (keys as from :func:`embedding_geometry`, after ``prefix``)
    show a collapsed space; None otherwise or when the diagnostics are absent."""
    get = lambda key: metrics.get(f"{prefix}geometry/{key}")  # noqa: E731
    reasons = []
    for key, name in (("img_cos", "image"), ("txt_cos", "caption")):
        value = get(key)
        if isinstance(value, (int, float)) and value > COLLAPSE_COSINE:
            reasons.append(f"mean {name}-{name} cosine {value:.2f} > {COLLAPSE_COSINE}")
    tied = get("tied")
    if isinstance(tied, (int, float)) and tied > COLLAPSE_TIED:
        reasons.append(f"{tied:.0%} of hardest negatives tied with their positive (> {COLLAPSE_TIED:.0%})")
    if not reasons:
        return None
    return ("the embeddings look collapsed (" + "; ".join(reasons) + "): a comparison against this run "
            "measures its collapse, not the method")


__all__ = ["COLLAPSE_COSINE", "COLLAPSE_TIED", "collapse_warning", "embedding_geometry", "mean_pairwise_cosine"]
