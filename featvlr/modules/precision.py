"""Scores in float32 under autocast: the one helper behind every similarity, logit and relation
matrix that the losses, modules and methods build.

Under bf16 autocast a dot product of unit vectors near 1 has a resolution of about 0.004, the
order of the gaps between hardest negatives, and at a logit scale of 100 a bf16 logit is off by
tenths. So scores are computed with autocast off, from inputs whose float16 / bfloat16 tensors
are promoted to float32 (float32 and float64 tensors are used as they are, so the result is
the same bits as without autocast).

Example::

    with fp32(v, t) as (v32, t32):      # autocast off in the block, half inputs promoted
        loss = hinge(v32 @ t32.t())
    scores = fp32_scores(v, t)          # v @ t.T in float32
    q = fp32_normalize(x)               # normalize(x) in float32
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

HALF = (torch.float16, torch.bfloat16)


def full_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` with float16/bfloat16 ones promoted to float32 (others unchanged)."""
    return tuple(t.float() if t.dtype in HALF else t for t in tensors)


@contextlib.contextmanager
def fp32(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Autocast off (on the first tensor's device type) for the block; yields ``tensors``
    through :func:`full_precision`: ``with fp32(v, t) as (v32, t32): ...``."""
    with torch.autocast(tensors[0].device.type, enabled=False):
        yield full_precision(*tensors)


def fp32_scores(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T`` (``b`` defaults to ``a``) in float32 (or float64), autocast off."""
    with fp32(a, a if b is None else b) as (x, y):
        return x @ y.t()


def fp32_normalize(x: torch.Tensor) -> torch.Tensor:
    """``normalize(x)`` along the last dim in float32 (or float64), autocast off."""
    with fp32(x) as (x32,):
        return F.normalize(x32, dim=-1)


__all__ = ["HALF", "fp32", "fp32_normalize", "fp32_scores", "full_precision"]
