"""The atomic writer of a feature cache (layout: :mod:`featvlr.cache.store`).

A cache is written to ``<path>.partial`` and ``os.replace``-d onto ``<path>`` only when
complete, so an interrupted extract never leaves a file that looks finished. Datasets are
uncompressed and contiguous by default, so that training reads random rows through a
memory map (:mod:`featvlr.data.rows`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featvlr import __version__
from featvlr.core.errors import InputError

FORMAT_VERSION = 1
STR_DTYPE = h5py.string_dtype("utf-8")


def row_chunks(shape: tuple[int, ...], itemsize: int, target_bytes: int = 1 << 20) -> tuple[int, ...]:
    """HDF5 chunk shape that splits by rows and keeps a chunk near ``target_bytes``."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    rows = int(max(1, min(shape[0] if shape[0] else 1, target_bytes // row_bytes)))
    return (rows,) + tuple(shape[1:])


class CacheWriter:
    """Atomic writer of a feature cache.

    Use as a context manager: the file is ``<path>.partial`` until the block exits without
    an exception, then it is renamed onto ``path``. On an exception the partial file is
    removed and ``path`` is left untouched.

    Example::

        with CacheWriter("features/f30k.h5", command="featvlr extract ...") as w:
            d = w.create("images/train/regions", (N, 36, 2048), np.float16)
            d[0:512] = chunk
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, command: str | None = None,
                 sources: dict[str, Any] | None = None, text_encoder: str = "", text_dim: int = 0):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(self.path, "the cache exists already; pass --overwrite to replace it")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = {
            "format_version": FORMAT_VERSION,
            "featvlr_version": __version__,
            "command": command if command is not None else " ".join(sys.argv),
            "sources": json.dumps(sources or {}),
            "text_encoder": text_encoder,
            "text_dim": int(text_dim),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.h5: h5py.File | None = None

    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            self.partial.unlink()
        self.h5 = h5py.File(self.partial, "w")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from featvlr.core.interrupts import Signalled, pending

        assert self.h5 is not None
        signum = pending() if exc_type is None else None  # an interrupt Python could not raise
        try:
            if exc_type is None and signum is None:
                for key, value in self.attrs.items():
                    self.h5.attrs[key] = value
        finally:
            self.h5.close()
            self.h5 = None
        if exc_type is None and signum is None:
            os.replace(self.partial, self.path)
            return
        if self.partial.exists():
            self.partial.unlink()
        if signum is not None:
            raise Signalled(signum)

    def set_attr(self, key: str, value: Any) -> None:
        """Set a root attribute (dicts and lists are stored as JSON)."""
        self.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value

    def create(self, name: str, shape: tuple[int, ...], dtype, *, chunked: bool = False) -> h5py.Dataset:
        """Create an empty dataset; fill it by slices. Uncompressed and contiguous by default,
        so that training reads random rows through a memory map (:mod:`featvlr.data.rows`)."""
        assert self.h5 is not None, "use CacheWriter as a context manager"
        dtype = np.dtype(dtype) if dtype is not STR_DTYPE else dtype
        chunks = None
        if chunked and len(shape) >= 1 and shape[0] > 0 and dtype is not STR_DTYPE:
            chunks = row_chunks(tuple(shape), np.dtype(dtype).itemsize)
        return self.h5.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)

    def write(self, name: str, data, *, chunked: bool = False) -> h5py.Dataset:
        """Write a whole array (or a list of strings) at once (contiguous unless ``chunked``)."""
        assert self.h5 is not None, "use CacheWriter as a context manager"
        if isinstance(data, (list, tuple)) and (len(data) == 0 or isinstance(data[0], str)):
            return self.h5.create_dataset(name, data=np.array(data, dtype=object), dtype=STR_DTYPE)
        arr = np.asarray(data)
        chunks = None
        if chunked and arr.ndim >= 1 and arr.shape[0] > 0:
            chunks = row_chunks(arr.shape, arr.dtype.itemsize)
        return self.h5.create_dataset(name, data=arr, chunks=chunks)
