"""Batches over a store split: one training item per caption, collated a whole batch at a time.

Training batches are built by :class:`CaptionBatches`, a map-style dataset *of batches*: item
``b`` of epoch ``e`` is the ``b``-th slice of a permutation seeded by ``(seed, e)``, and its
random region dropout is seeded by ``(seed, e, b)``. So the same seed gives the same batches
whatever the number of DataLoader workers, a resumed run sees the batches an uninterrupted
run would, and under DDP rank ``r`` takes the ``r``-th contiguous share of every global
batch (gathering the ranks' embeddings in rank order rebuilds the global batch exactly).

Reading is vectorised: regions of a batch come in one HDF5 (or in-memory) read, ragged token
features are padded with one scatter. The key names are documented in
:mod:`featvlr.methods.base`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featvlr.store import StoreSplit


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


class SeededBatches(Dataset):
    """Epochs of global batches over ``items``: a permutation seeded by ``(seed, epoch)``,
    cut into batches of ``batch_size`` (the last incomplete one dropped), each shared by
    contiguous slices among ``world_size`` ranks. Subclasses build a batch in ``__getitem__``."""

    def _init_batches(self, items: np.ndarray, *, batch_size: int, seed: int, rank: int, world_size: int,
                      max_batches: int, what: str) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} ranks")
        n_batches = len(items) // batch_size
        if n_batches == 0:
            raise ValueError(f"{what}: {len(items)} items, fewer than one batch of {batch_size}")
        self.items = items
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.n_batches = min(n_batches, max_batches) if max_batches else n_batches
        self.epoch = 0
        self._perm: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._perm = None

    def __len__(self) -> int:
        return self.n_batches

    def permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = self.items[np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))]
        return self._perm

    def batch_rows(self, b: int) -> np.ndarray:
        """The items of global batch ``b`` that this rank handles."""
        rows = self.permutation()[b * self.batch_size:(b + 1) * self.batch_size]
        share = self.batch_size // self.world_size
        return rows[self.rank * share:(self.rank + 1) * share]


class CaptionBatches(SeededBatches):
    """Epoch of training batches over the captions of a split (one item = one batch).

    Args:
        split: the training split.
        batch_size: the global batch size (all ranks together).
        seed: base seed of the permutation and of region dropout.
        region_dropout: VSE-infinity region dropout probability.
        max_tokens: truncate captions to this many tokens (0 keeps all).
        rank, world_size: this process's share of every global batch under DDP.
        max_batches: cap on batches per epoch (0: all).
    """

    def __init__(self, split: StoreSplit, *, batch_size: int, seed: int = 0, region_dropout: float = 0.0,
                 max_tokens: int = 0, rank: int = 0, world_size: int = 1, max_batches: int = 0):
        self.split = split
        self.region_dropout = region_dropout
        self.max_tokens = max_tokens
        self.image_index = split.image_index()
        self.has_global = split.has(f"images/{split.name}/global")
        self._init_batches(np.arange(len(self.image_index)), batch_size=batch_size, seed=seed, rank=rank,
                           world_size=world_size, max_batches=max_batches, what=f"captions of split {split.name!r}")

    def caption_rows(self, b: int) -> np.ndarray:
        """The captions of global batch ``b`` that this rank handles."""
        return self.batch_rows(b)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        captions = self.caption_rows(b)
        images = self.image_index[captions]
        uniform = None
        if self.region_dropout > 0:
            # Draws for the whole global batch, sliced: the same regions drop whatever the ranks.
            share = self.batch_size // self.world_size
            draws = np.random.default_rng([self.seed, self.epoch, b]).random((self.batch_size, self.split.n_regions))
            uniform = draws[self.rank * share:(self.rank + 1) * share]
        batch = region_batch(self.split, images, dropout=self.region_dropout, uniform=uniform)
        batch.update(text_batch(self.split, captions, max_tokens=self.max_tokens))
        if self.has_global:
            batch["global_image"] = self.split.global_features(images).astype(np.float32, copy=False)
        batch["image_ids"] = images
        batch["text_ids"] = captions
        return to_tensors(batch)


def batch_loader(batches: Dataset, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """DataLoader over a dataset of whole batches (no re-collation, ordered)."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if num_workers else None)


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
