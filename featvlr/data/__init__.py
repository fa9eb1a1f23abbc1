"""Batches over a store split.

Training: :class:`~featvlr.data.captions.CaptionBatches` (cross-modal) and
:class:`~featvlr.data.composed.ComposedBatches` are map-style datasets *of batches* seeded by
``(seed, epoch)`` (:mod:`featvlr.data.seeded`): the same seed gives the same batches, a
resumed run sees the batches an uninterrupted run would, and under DDP rank ``r`` takes the
``r``-th contiguous share of every global batch. Rows are read at memory speed from the GPU,
RAM or a memory map of the cache (:mod:`featvlr.data.rows`) into reused buffers, ahead of
the step (:mod:`featvlr.data.stream`).

Evaluation: :func:`iter_image_batches` and :func:`iter_text_batches` give image-only and
text-only batches in row order. The key names are documented in :mod:`featvlr.methods.base`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from featvlr.cache.store import StoreSplit


def pad_tokens(seqs: list[np.ndarray], dim: int, max_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad ragged ``[L_i, D]`` arrays into ``[B, Lmax, D]`` float32 and a ``[B, Lmax]`` bool mask."""
    if max_tokens:
        seqs = [s[:max_tokens] for s in seqs]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    lengths_c = np.maximum(lengths, 1)
    lmax = int(lengths_c.max()) if len(seqs) else 1
    out = np.zeros((len(seqs), lmax, dim), dtype=np.float32)
    mask = np.arange(lmax)[None, :] < lengths[:, None]
    if lengths.sum():
        out[mask] = np.concatenate([s for s in seqs if len(s)], axis=0)
    return out, mask


def region_batch(split: StoreSplit, rows: np.ndarray, *, dropout: float = 0.0,
                 uniform: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Regions of image ``rows`` with their mask; with ``dropout`` each region is dropped with
    that probability (VSE-infinity's size augmentation; at least one region is kept), and the
    kept regions are moved to the front. ``uniform [len(rows), R]`` holds the random draws."""
    regions = split.regions(rows).astype(np.float32, copy=False)
    lengths = split.region_lengths(rows)
    b, r, _ = regions.shape
    valid = np.arange(r)[None, :] < lengths[:, None]
    if dropout > 0 and uniform is not None:
        keep = (uniform > dropout) & valid
        empty = ~keep.any(1)
        keep[empty, 0] = True
        order = np.argsort(~keep, axis=1, kind="stable")
        regions = np.take_along_axis(regions, order[:, :, None], axis=1)
        valid = np.take_along_axis(keep, order, axis=1)
        regions = regions * valid[:, :, None]
    rmax = int(valid.sum(1).max()) if b else 0
    return {"regions": regions[:, :rmax], "region_mask": valid[:, :rmax]}


def text_batch(split: StoreSplit, rows: np.ndarray, *, max_tokens: int = 0) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"pooled_text": split.pooled(rows).astype(np.float32, copy=False)}
    if split.has_tokens:
        out["tokens"], out["token_mask"] = pad_tokens(split.tokens(rows), split.text_dim, max_tokens)
    return out


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(value))
        out[key] = t
    if "region_mask" in out:
        out["region_lengths"] = out["region_mask"].sum(1)
    if "token_mask" in out:
        out["token_lengths"] = out["token_mask"].sum(1)
    return out


def move_to(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def iter_image_batches(split: StoreSplit, batch_size: int = 256, device: torch.device | str = "cpu"
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """Image-only batches of a split in row order (for ``encode_images``)."""
    has_global = split.has(f"images/{split.name}/global")
    for start in range(0, split.n_images, batch_size):
        rows = np.arange(start, min(start + batch_size, split.n_images))
        batch: dict[str, np.ndarray] = {}
        if split.has_regions:
            batch.update(region_batch(split, rows))
        if has_global:
            batch["global_image"] = split.global_features(rows).astype(np.float32, copy=False)
        batch["image_ids"] = rows
        yield move_to(to_tensors(batch), device)


def iter_text_batches(split: StoreSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                      max_tokens: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Text-only batches of a split in row order (for ``encode_texts``)."""
    image_index = split.image_index()
    for start in range(0, split.n_texts, batch_size):
        rows = np.arange(start, min(start + batch_size, split.n_texts))
        batch = text_batch(split, rows, max_tokens=max_tokens)
        batch["text_ids"] = rows
        batch["image_ids"] = image_index[rows]
        yield move_to(to_tensors(batch), device)


from featvlr.data.captions import CaptionBatches  # noqa: E402
from featvlr.data.seeded import SeededBatches  # noqa: E402  (re-exported)
from featvlr.data.stream import BatchStream  # noqa: E402

__all__ = ["BatchStream", "CaptionBatches", "SeededBatches", "iter_image_batches", "iter_text_batches", "move_to",
           "pad_tokens", "region_batch", "text_batch", "to_tensors"]
