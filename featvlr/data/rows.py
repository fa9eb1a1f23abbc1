"""Random rows of a cache dataset at memory speed: the read path of training batches.

A :class:`RowTable` serves ``take(index)`` for one dataset of a split (``regions`` seen as
``[N * R, D]`` region rows, ``tokens``, ``pooled``, ``global``) in its storage dtype, from
one of three placements:

``device``  the whole dataset as a tensor on the training device (a GPU that has room):
            a batch is one ``index_select`` there, with no host work per step;
``memory``  the whole dataset as a tensor in RAM (on a CPU run this is also the device);
``disk``    a memory map of the cache file: a contiguous, uncompressed dataset is a tensor
            over the map (the same ``index_select``, at page-cache speed); a chunked,
            uncompressed one is gathered by byte offsets of its rows; anything else (a
            compressed dataset) falls back to sorted HDF5 reads.

:func:`choose_placement` picks ``auto`` from free GPU memory and available RAM.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

PLACEMENTS = ("device", "memory", "disk")
# Shares of free GPU memory and of available RAM a training split may take.
DEVICE_SHARE = 0.5
RAM_SHARE = 0.5


def available_ram() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``), or total RAM."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def free_device_memory(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def choose_placement(nbytes: int, device: torch.device, *, in_memory: str = "auto", on_device: str = "auto") -> str:
    """Where a training split of ``nbytes`` lives.

    ``on_device`` (auto/yes/no): the training device, when it is a GPU and the split takes at
    most half its free memory (``yes`` skips the size check). ``in_memory`` (auto/yes/no):
    otherwise RAM, when the split takes at most half the available memory; ``no`` reads from
    the cache file.
    """
    if device.type == "cuda" and on_device != "no":
        if on_device == "yes" or nbytes <= DEVICE_SHARE * free_device_memory(device):
            return "device"
    if in_memory == "yes" or (in_memory == "auto" and nbytes <= RAM_SHARE * available_ram()):
        return "memory"
    return "disk"


def _mappable(ds) -> bool:
    """An uncompressed, unfiltered dataset whose bytes lie in the file as stored."""
    try:
        return ds.id.get_create_plist().get_nfilters() == 0 and ds.dtype.kind in "fiub"
    except Exception:  # noqa: BLE001 - any h5py oddity: use HDF5 reads
        return False


def _chunk_row_offsets(ds, row_bytes: int) -> np.ndarray | None:
    """File offset of each row of a chunked dataset split by rows only, else None."""
    chunks = ds.chunks
    if chunks is None or tuple(chunks[1:]) != tuple(ds.shape[1:]):
        return None
    per_chunk = chunks[0]
    n_chunks = ds.id.get_num_chunks()
    starts = np.full(-(-ds.shape[0] // per_chunk), -1, dtype=np.int64)
    for i in range(n_chunks):
        info = ds.id.get_chunk_info(i)
        starts[info.chunk_offset[0] // per_chunk] = info.byte_offset
    if (starts < 0).any():  # unwritten chunks: no bytes to map
        return None
    rows = np.arange(ds.shape[0], dtype=np.int64)
    return starts[rows // per_chunk] + (rows % per_chunk) * row_bytes


class RowTable:
    """Rows ``[n, *row_shape]`` of one dataset; ``take`` returns a tensor on :attr:`device`.

    Args:
        tensor: the rows as a tensor (in RAM, on a GPU, or over a memory map), or None.
        byte_rows: for a chunked dataset, ``(memory map of the file as bytes, row offsets)``.
        h5: an h5py dataset read by sorted indices (the fallback).
        rows_per_item: ``R`` when ``[N, R, D]`` regions are served as ``[N * R, D]`` rows.
    """

    def __init__(self, *, placement: str, dtype: np.dtype, row_shape: tuple[int, ...], n_rows: int,
                 tensor: torch.Tensor | None = None, byte_rows: tuple[np.ndarray, np.ndarray] | None = None,
                 h5: Any = None, rows_per_item: int = 1):
        self.placement = placement
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.n_rows = n_rows
        self.tensor = tensor
        self.h5 = h5
        self.rows_per_item = rows_per_item
        self.device = tensor.device if tensor is not None else torch.device("cpu")
        self.torch_dtype = torch.from_numpy(np.zeros(0, dtype=self.dtype)).dtype
        self._bytes = None
        if byte_rows is not None:
            mm, item_offsets = byte_rows
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
            sub = np.arange(rows_per_item, dtype=np.int64) * row_bytes
            self._offsets = (item_offsets[:, None] + sub[None, :]).reshape(-1)
            # every byte of the file as the start of a row: one fancy index gathers a batch
            self._bytes = np.ndarray(shape=(mm.size - row_bytes + 1,), dtype=np.dtype((np.void, row_bytes)),
                                     buffer=mm, strides=(1,))

    def take(self, index: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``index`` (int64, any order, repeats allowed) as ``[len(index), *row_shape]``;
        written into ``out`` (on :attr:`device`, right shape and dtype) when given."""
        index = np.asarray(index, dtype=np.int64)
        if self.tensor is not None:
            idx = torch.from_numpy(index).to(self.device, non_blocking=True)
            if out is None:
                return self.tensor.index_select(0, idx)
            return torch.index_select(self.tensor, 0, idx, out=out)
        if self._bytes is not None:
            rows = self._bytes[self._offsets[index]].view(self.dtype).reshape((len(index),) + self.row_shape)
        else:
            from featvlr.cache.store import _take

            r = self.rows_per_item
            if r > 1:  # read each needed item once, then pick its rows
                items, inverse = np.unique(index // r, return_inverse=True)
                rows = _take(self.h5, items)[inverse, index % r]
            else:
                rows = _take(self.h5, index)
        result = torch.from_numpy(np.ascontiguousarray(rows))
        if out is None:
            return result
        return out.copy_(result)


def open_table(split: Any, key: str, placement: str, device: torch.device, *, region_rows: bool = False
               ) -> RowTable:
    """A :class:`RowTable` over dataset ``key`` of ``split`` (``region_rows``: ``[N, R, D]``
    served as ``[N * R, D]``). Arrays read into memory are kept on the split
    (:meth:`featvlr.cache.store.StoreSplit.load_in_memory`), so the runs of an ablation in one
    process read them once; an array already there is used as is, whatever ``placement``."""
    if placement in ("memory", "device") and hasattr(split, "load_in_memory"):
        split.load_in_memory((key,))  # kept on the split: later runs in this process share it
    memory = getattr(split, "_memory", {})
    ds = memory[key] if key in memory else split.store.dataset(key)
    shape = tuple(ds.shape)
    r = shape[1] if region_rows else 1
    row_shape = shape[2:] if region_rows else shape[1:]
    n_rows = shape[0] * r
    common = dict(dtype=ds.dtype, row_shape=row_shape, n_rows=n_rows, rows_per_item=r)
    if isinstance(ds, np.ndarray) or placement in ("memory", "device"):
        array = ds if isinstance(ds, np.ndarray) else ds[:]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).reshape((n_rows,) + row_shape)
        if placement == "device":
            tensor = tensor.to(device)
        return RowTable(placement=placement if placement != "disk" else "memory", tensor=tensor, **common)
    if _mappable(ds):
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        offset = ds.id.get_offset()
        path = str(split.store.path)
        if offset is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the map is never written
                mm = np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=(n_rows,) + row_shape)
                tensor = torch.from_numpy(mm)
            return RowTable(placement="disk", tensor=tensor, **common)
        offsets = _chunk_row_offsets(ds, row_bytes)
        if offsets is not None:
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            return RowTable(placement="disk", byte_rows=(mm, offsets), **common)
    return RowTable(placement="disk", h5=ds, **common)


def dataset_bytes(split: Any, keys: list[str]) -> int:
    total = 0
    for key in keys:
        if split.store.has(key):
            ds = split.store.dataset(key)
            total += int(ds.size) * ds.dtype.itemsize
    return total
