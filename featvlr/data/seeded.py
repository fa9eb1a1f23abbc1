"""The epoch-seeded dataset of whole batches that caption and composed batches share."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class SeededBatches(Dataset):
    """Epochs of global batches over ``items``: a permutation seeded by ``(seed, epoch)``,
    cut into batches of ``batch_size`` (the last incomplete one dropped), each shared by
    contiguous slices among ``world_size`` ranks.

    Subclasses build batch ``b`` in three steps (see :mod:`featvlr.data.captions`):
    ``plan(b)`` on the host, ``gather(plan, pool)`` where the rows live, and
    ``finalize(host, device, pool)`` on the training device; ``batches[b]`` runs all three.
    """

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

    # -- the three steps -----------------------------------------------------------------
    def plan(self, b: int) -> Any:
        raise NotImplementedError

    def gather(self, plan: Any, pool: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def finalize(self, host: dict[str, Any], device: torch.device | str | None = None, pool: Any = None
                 ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def table_device(self) -> torch.device:
        """Where :meth:`gather` leaves its tensors."""
        return torch.device("cpu")

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        return self.finalize(self.gather(self.plan(b)))
