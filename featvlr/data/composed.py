"""Composed-retrieval batches over a composed split of the feature cache.

A composed split (CIRR, FashionIQ, Shoes; layout written by :mod:`featvlr.extract.composed`)
holds frozen global image features ``images/<split>/global [N, Dg]`` (optionally ``K``
augmented views ``images/<split>/global_aug [N, K, Dg]``), modifier-text vectors
``texts/<split>/pooled`` and the queries ``composed/<split>/reference``, ``target`` (``-1``
where unknown, CIRR test1), ``subsets [Q, 6]`` (CIRR image sets, ``-1`` padded),
``pair_ids`` and ``category`` (FashionIQ); ``composed/<split>/text`` optionally maps each
query to its text row(s) (see :class:`ComposedQueries`).

Batch keys (all ``[B, ...]`` tensors):

================  ============  ==========================================================
key               dtype         meaning
================  ============  ==========================================================
reference_image   float [B,Dg]  frozen global feature of the reference image
reference_aug     float [B,Dg]  one of the K cached augmented views of the reference
                                (training only, when the cache has views)
pooled_text       float [B,Dt]  modifier text vector
target_image      float [B,Dg]  frozen global feature of the target (training only)
reference_ids     long          reference image row in the split
target_ids        long          target image row (-1: unknown)
query_ids         long          query row in the split
================  ============  ==========================================================

:class:`ComposedBatches` is a map-style dataset *of batches* with the interface of
:class:`featvlr.data.captions.CaptionBatches`: item ``b`` of epoch ``e`` is the ``b``-th slice of a
permutation of the training queries seeded by ``(seed, e)``; the augmented view of each
reference and the text variant of each query are drawn from a generator seeded by
``(seed, e, b, rank)``, so batches do not depend on the number of DataLoader workers and a
resumed run sees the same ones. Under DDP rank ``r`` takes the ``r``-th contiguous share of
every global batch.

"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featvlr.cache.store import StoreSplit, _take
from featvlr.core.errors import InputError
from featvlr.data import SeededBatches, move_to, to_tensors

# Cached augmented views are read into RAM when they take at most this many bytes.
AUG_IN_MEMORY_BYTES = 2 << 30


@dataclass
class ComposedQueries:
    """The query arrays of one composed split, read once.

    ``text`` is ``[Q, V]`` rows of ``texts/<split>/pooled``: ``V = 1`` for one modifier text
    per query; FashionIQ training queries may carry ``V`` variants (the random caption
    concatenation), one drawn per step, column 0 being the evaluation text. Without a
    ``composed/<split>/text`` dataset, query ``q`` uses text row ``q``.
    """

    reference: np.ndarray
    target: np.ndarray
    text: np.ndarray
    subsets: np.ndarray | None = None
    pair_ids: np.ndarray | None = None
    category: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.reference)


def read_queries(split: StoreSplit) -> ComposedQueries:
    """Read ``composed/<split>`` (an :class:`InputError` when the split has none)."""
    arrays = split.composed()
    if not arrays or "reference" not in arrays or "target" not in arrays:
        raise InputError(split.store.path, f"split {split.name!r} has no composed queries "
                         f"(composed/{split.name}/reference and target)")
    reference = np.asarray(arrays["reference"], dtype=np.int64)
    target = np.asarray(arrays["target"], dtype=np.int64)
    n = len(reference)
    if "text" in arrays:
        text = np.asarray(arrays["text"], dtype=np.int64)
        text = text[:, None] if text.ndim == 1 else text
    else:
        text = np.arange(n, dtype=np.int64)[:, None]
    if text.shape[0] != n or target.shape != (n,):
        raise InputError(split.store.path, f"composed/{split.name}: reference, target and text disagree on the "
                         "number of queries")
    n_img, n_txt = split.n_images, split.n_texts
    if n and (reference.max() >= n_img or reference.min() < 0 or target.max() >= n_img or target.min() < -1):
        raise InputError(split.store.path, f"composed/{split.name}: reference/target rows outside the "
                         f"{n_img} images")
    if n and (text.max() >= n_txt or text.min() < -1 or (text[:, 0] < 0).any()):
        raise InputError(split.store.path, f"composed/{split.name}: text rows outside the {n_txt} texts")
    subsets = np.asarray(arrays["subsets"], dtype=np.int64) if "subsets" in arrays else None
    return ComposedQueries(reference=reference, target=target, text=text, subsets=subsets,
                           pair_ids=arrays.get("pair_ids"), category=arrays.get("category"))


class ComposedBatches(SeededBatches):
    """Epoch of composed training batches (one item = one whole batch).

    Args:
        split: the training split (global image features, texts, composed queries).
        batch_size: the global batch size (all ranks together).
        seed: base seed of the permutation, the augmented-view and the text-variant draws.
        rank, world_size: this process's share of every global batch under DDP.
        max_batches: cap on batches per epoch (0: all).
        use_aug: pass ``reference_aug`` when the cache has views (default True).
    """

    def __init__(self, split: StoreSplit, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_batches: int = 0, use_aug: bool = True):
        self.split = split
        q = read_queries(split)
        keep = np.nonzero(q.target >= 0)[0]  # training needs a target
        self.queries = q
        self.rows = keep
        self._init_batches(keep, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           max_batches=max_batches, what=f"composed queries with a target in split {split.name!r}")
        self.global_ = np.asarray(split.global_features(), dtype=np.float32)
        self.pooled = np.asarray(split.pooled(), dtype=np.float32)
        self.n_variants = (q.text >= 0).sum(1)
        aug_key = f"images/{split.name}/global_aug"
        self.aug: Any = None
        if use_aug and split.store.has(aug_key):
            ds = split.store.dataset(aug_key)
            if ds.ndim != 3 or ds.shape[0] != split.n_images or ds.shape[2] != self.global_.shape[1]:
                raise InputError(split.store.path, f"{aug_key} has shape {tuple(ds.shape)}, expected "
                                 f"({split.n_images}, K, {self.global_.shape[1]})")
            self.aug = ds[:] if ds.size * ds.dtype.itemsize <= AUG_IN_MEMORY_BYTES else None
            self.aug_key = aug_key
            self.n_aug = int(ds.shape[1])
            self.has_aug = self.n_aug > 0
        else:
            self.has_aug = False

    def query_rows(self, b: int) -> np.ndarray:
        """The queries of global batch ``b`` that this rank handles."""
        return self.batch_rows(b)

    def _aug_views(self, refs: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.aug is not None:
            return self.aug[refs, k]
        views = _take(self.split.store.dataset(self.aug_key), refs)
        return views[np.arange(len(refs)), k]

    def plan(self, b: int) -> int:
        if not 0 <= b < self.n_batches:
            raise IndexError(b)
        return b

    def finalize(self, host: dict[str, Any], device: torch.device | str | None = None, pool: Any = None
                 ) -> dict[str, torch.Tensor]:
        return move_to(host, device) if device is not None else host

    def gather(self, b: int, pool: Any = None) -> dict[str, torch.Tensor]:
        """Batch ``b`` in float32 on the host (global features are small: read in RAM)."""
        rows = self.query_rows(b)
        rng = np.random.default_rng([self.seed, self.epoch, b, 1 + self.rank])
        q = self.queries
        refs, tgts = q.reference[rows], q.target[rows]
        variant = (rng.random(len(rows)) * self.n_variants[rows]).astype(np.int64)
        text_rows = q.text[rows, variant]
        batch = {
            "reference_image": self.global_[refs],
            "target_image": self.global_[tgts],
            "pooled_text": self.pooled[text_rows],
            "reference_ids": refs,
            "target_ids": tgts,
            "query_ids": rows,
        }
        if self.has_aug:
            k = rng.integers(0, self.n_aug, size=len(rows))
            batch["reference_aug"] = np.asarray(self._aug_views(refs, k), dtype=np.float32)
        return to_tensors(batch)


def iter_query_batches(split: StoreSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                       queries: ComposedQueries | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Query batches of a composed split in row order (for ``encode_queries``): the reference
    image feature, the evaluation text (variant 0) and the ids."""
    q = queries if queries is not None else read_queries(split)
    for start in range(0, q.n, batch_size):
        rows = np.arange(start, min(start + batch_size, q.n))
        refs = q.reference[rows]
        batch = {
            "reference_image": np.asarray(split.global_features(refs), dtype=np.float32),
            "pooled_text": np.asarray(split.pooled(q.text[rows, 0]), dtype=np.float32),
            "reference_ids": refs,
            "target_ids": q.target[rows],
            "query_ids": rows,
        }
        yield move_to(to_tensors(batch), device)
