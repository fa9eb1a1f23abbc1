"""Tensor inputs of the ranking drivers: conversion, index matrices, NaN screening, row counts."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError

DEFAULT_CHUNK_ELEMENTS = 50_000_000
_NEG_INF = float("-inf")


def as_tensor(x: Any, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A torch view of ``x`` (numpy arrays, memmaps and lists are wrapped without a copy
    where possible); tensors stay on their device unless ``device`` is given."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise FeatvlrError(f"expected a numeric array, got an object array of shape {arr.shape}")
        if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous and not arr.flags.f_contiguous:
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
        with warnings.catch_warnings():  # read-only memmaps: we never write through the view
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


def as_index(x: Any, *, device: torch.device | None = None) -> torch.Tensor | None:
    """Long tensor of indices (``None`` passes through)."""
    if x is None:
        return None
    return as_tensor(x).to(dtype=torch.long, device=device)


def _float(block: torch.Tensor) -> torch.Tensor:
    return block if block.dtype in (torch.float32, torch.float64) else block.float()


def rows_per_block(n_gallery: int, chunk_elements: int) -> int:
    """How many query rows of ``n_gallery`` scores fit in ``chunk_elements``."""
    if chunk_elements < 1:
        raise FeatvlrError(f"chunk_elements must be positive, got {chunk_elements}")
    return max(1, int(chunk_elements) // max(1, int(n_gallery)))


def _check_nan(block: torch.Tensor) -> None:
    # a sum is a cheap screen (NaN propagates); an inf - inf sum is then checked exactly
    if not bool(torch.isfinite(block.sum())) and bool(torch.isnan(block).any()):
        raise FeatvlrError("the scores contain NaN values")


def check_scores(sims: Any, chunk_rows: int = 4096) -> None:
    """Raise :class:`FeatvlrError` if a score matrix holds NaN (one pass, by row blocks)."""
    s = as_tensor(sims)
    for start in range(0, s.shape[0], chunk_rows):
        _check_nan(_float(s[start:start + chunk_rows]))


def _row_count(block: torch.Tensor, thr: torch.Tensor, op: str = "ge") -> torch.Tensor:
    """Per row, how many entries of ``block`` [q, G] are ``>=`` (or ``==``) ``thr`` [q, 1].

    On CPU through numpy, whose boolean row count is about 10x faster than torch's.
    """
    if block.device.type == "cpu":
        b, t = block.detach().numpy(), thr.detach().numpy()
        mask = b >= t if op == "ge" else b == t
        return torch.from_numpy(np.count_nonzero(mask, axis=1).astype(np.int64))
    mask = block >= thr if op == "ge" else block == thr
    return mask.sum(dim=1)



def _index_matrix(x: Any, n_queries: int, device: torch.device, what: str) -> torch.Tensor | None:
    """``[Q]`` or ``[Q, m]`` indices (``-1`` = none) as a ``[Q, m]`` long tensor."""
    if x is None:
        return None
    t = as_index(x, device=device)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n_queries:
        raise FeatvlrError(f"{what} must have one row per query ({n_queries}); got shape {tuple(t.shape)}")
    return t


def _dedupe(idx: torch.Tensor) -> torch.Tensor:
    """Sort each row and replace repeated indices by -1 (so nothing is counted twice)."""
    if idx.shape[1] < 2:
        return idx
    s = idx.sort(dim=1).values
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    return s.masked_fill(dup, -1)


def _check_range(idx: torch.Tensor | None, n: int, what: str) -> None:
    if idx is not None and idx.numel() and (int(idx.max()) >= n or int(idx.min()) < -1):
        raise FeatvlrError(f"{what} holds indices outside [-1, {n - 1}] (gallery of {n} items)")


def group_positives(labels: Any, n_groups: int) -> torch.Tensor:
    """``[n_groups, P]`` long matrix: row g lists the positions i with ``labels[i] == g``,
    padded with -1 (e.g. the captions of each image from the caption -> image index)."""
    lab = as_index(labels)
    valid = (lab >= 0) & (lab < n_groups)
    pos = torch.nonzero(valid).flatten()
    grp = lab[pos]
    order = torch.argsort(grp, stable=True)
    pos, grp = pos[order], grp[order]
    counts = torch.bincount(grp, minlength=n_groups)
    width = int(counts.max()) if len(counts) and counts.numel() else 0
    out = torch.full((n_groups, max(width, 1)), -1, dtype=torch.long)
    if len(pos):
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(pos)) - starts[grp]
        out[grp, slot] = pos
    return out.to(lab.device)
