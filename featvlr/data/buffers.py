"""Reused batch buffers: the loader writes each batch into the buffers of a slot, so no
batch-sized array is allocated (and page-faulted) per step."""
from __future__ import annotations

import torch


class BufferPool:
    """Per-slot, per-name tensors grown on demand; ``slot(i).get(...)`` returns a view of the
    right shape.

    Batch ``b`` uses slot ``b % slots``, so that a batch still in use is never overwritten:
    with ``k`` batches built ahead of the one in use, ``k + 2`` slots suffice. ``pin``
    allocates host buffers in page-locked memory (for non-blocking copies to a GPU).
    """

    def __init__(self, slots: int = 2, *, pin: bool = False):
        self.slots = slots
        self.pin = pin
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}

    def slot(self, i: int) -> "PoolSlot":
        return PoolSlot(self, i % self.slots)

    def get(self, slot: int, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
            ) -> torch.Tensor:
        numel = 1
        for n in shape:
            numel *= int(n)
        key = (slot, name)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            pin = self.pin and device.type == "cpu" and torch.cuda.is_available()
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device, pin_memory=pin)
            self._buffers[key] = buf
        return buf[:numel].view(shape)


class PoolSlot:
    """The buffers of one slot: what a batch's gather and finalize write into."""

    def __init__(self, pool: BufferPool, index: int):
        self.pool, self.index = pool, index

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.pool.get(self.index, name, shape, dtype, device)
