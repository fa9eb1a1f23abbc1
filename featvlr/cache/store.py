"""The HDF5 feature cache: its layout and the validating lazy reader (written by
:class:`featvlr.cache.writer.CacheWriter`).

Layout (``FORMAT_VERSION`` 1; every split is optional)::

    /                          attrs: format_version, featvlr_version, command, sources (JSON),
                                      text_encoder, text_dim, created
    images/<split>/regions     [N, R, D]  float16|float32, chunked by rows
    images/<split>/lengths     [N]        int32 valid regions per image (optional, else R)
    images/<split>/global      [N, Dg]    global image vectors (optional)
    images/<split>/global_aug  [N, K, Dg] K augmented views per image (optional)
    images/<split>/ids         [N]        UTF-8 image ids / names (optional)
    texts/<split>/tokens       [T, Dt]    ragged token features, flat
    texts/<split>/offsets      [Nt + 1]   int64, tokens of text c are tokens[offsets[c]:offsets[c+1]]
    texts/<split>/pooled       [Nt, Dt]   pooled sentence embeddings
    texts/<split>/image_index  [Nt]       int64 caption -> image row (-1 where no image)
    texts/<split>/raw          [Nt]       UTF-8 captions
    relevance/<split>/rougeL   [Nt, N]    float32 caption x image relevance (TERAN definition)
    relevance/<split>/<kind>   [Nt, N]    float32 other imported relevance (e.g. spice)
    composed/<split>/...       reference, target, text, subsets, pair_ids, category (composed data)

A cache is written by :class:`featvlr.cache.writer.CacheWriter` to ``<path>.partial`` and
``os.replace``-d onto ``<path>`` only when complete, so an interrupted extract never leaves a
file that looks finished. Readers open the file lazily (an h5py handle cannot be pickled
into DataLoader workers), read-only, and validate on open.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from featvlr.cache.writer import FORMAT_VERSION, STR_DTYPE, CacheWriter, row_chunks  # noqa: F401  (re-exported)
from featvlr.core.errors import InputError

READABLE_VERSIONS = (1,)


@dataclass
class SplitInfo:
    """Counts of one split, as ``featvlr info`` prints them."""

    name: str
    n_images: int
    n_texts: int
    datasets: dict[str, tuple[tuple[int, ...], str]]


class FeatureStore:
    """Validating, lazily opened, read-only view of a feature cache.

    The h5py handle is opened on first access in each process, so a store can be passed
    to DataLoader workers (it pickles as its path). ``load_in_memory=True`` reads the
    arrays a split uses into RAM on first use (for caches that fit).
    """

    def __init__(self, path: str | os.PathLike, *, validate: bool = True):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        if not self.path.exists():
            raise InputError(self.path, "no such feature cache (run `featvlr extract` or `featvlr demo` first)")
        if validate:
            self.validate()

    # -- pickling: reopen lazily in each worker -------------------------------------------
    def __getstate__(self) -> dict:
        return {"path": self.path, "_h5": None, "_pid": None, "_split_views": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as exc:
                raise InputError(self.path,
                                 f"not a readable HDF5 feature cache (truncated or corrupt?): {exc}") from None
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    # -- metadata ------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.h5.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if key == "sources" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out

    def splits(self) -> list[str]:
        names: set[str] = set()
        for group in ("images", "texts", "composed"):
            if group in self.h5:
                names.update(self.h5[group].keys())
        return sorted(names)

    def has(self, name: str) -> bool:
        return name in self.h5

    def dataset(self, name: str) -> h5py.Dataset:
        try:
            return self.h5[name]
        except KeyError:
            raise InputError(self.path, f"the cache has no dataset {name!r}") from None

    def split_info(self, split: str) -> SplitInfo:
        datasets: dict[str, tuple[tuple[int, ...], str]] = {}
        for group in ("images", "texts", "relevance", "composed"):
            key = f"{group}/{split}"
            if key in self.h5:
                for name, ds in self.h5[key].items():
                    datasets[f"{group}/{name}"] = (tuple(ds.shape), str(ds.dtype))
        n_img = datasets.get("images/regions", datasets.get("images/global", ((0,), "")))[0][0]
        n_txt = datasets.get("texts/pooled", ((0,), ""))[0][0]
        return SplitInfo(split, int(n_img), int(n_txt), datasets)

    def split(self, name: str) -> "StoreSplit":
        """The split ``name``; the same object on every call, so in-memory arrays are shared."""
        cached = self.__dict__.setdefault("_split_views", {})
        if name not in cached:
            if name not in self.splits():
                raise InputError(self.path,
                                 f"no split {name!r} in the cache (it has: {', '.join(self.splits()) or 'none'})")
            cached[name] = StoreSplit(self, name)
        return cached[name]

    # -- validation ----------------------------------------------------------------------
    def validate(self, *, sample_rows: int = 64) -> None:
        """Check the format version, shapes and counts, and a sample of values for NaN/inf."""
        h5 = self.h5
        version = h5.attrs.get("format_version")
        if version is None:
            raise InputError(self.path, "not a featvlr feature cache (no format_version attribute)")
        if int(version) not in READABLE_VERSIONS:
            raise InputError(self.path,
                             f"cache format version {int(version)} is not one this featvlr reads {READABLE_VERSIONS}")
        for split in self.splits():
            self._validate_split(split, sample_rows)

    def _validate_split(self, split: str, sample_rows: int) -> None:
        h5 = self.h5
        img = h5.get(f"images/{split}")
        txt = h5.get(f"texts/{split}")
        n_img = None
        if img is not None:
            for key in ("regions", "global"):
                if key in img:
                    ds = img[key]
                    want_ndim = 3 if key == "regions" else 2
                    if ds.ndim != want_ndim:
                        raise InputError(self.path, f"images/{split}/{key} has rank {ds.ndim}, expected {want_ndim}")
                    if n_img is not None and ds.shape[0] != n_img:
                        raise InputError(self.path, f"images/{split}: regions and global disagree on the image count")
                    n_img = ds.shape[0]
                    self._check_finite(ds, f"images/{split}/{key}", sample_rows)
        if txt is not None:
            for key in ("offsets", "pooled", "image_index"):
                if key not in txt:
                    raise InputError(self.path, f"texts/{split} lacks {key!r}")
            n_txt = txt["pooled"].shape[0]
            if txt["offsets"].shape != (n_txt + 1,):
                raise InputError(self.path,
                                 f"texts/{split}/offsets has shape {txt['offsets'].shape}, expected ({n_txt + 1},)")
            if txt["image_index"].shape != (n_txt,):
                raise InputError(self.path,
                                 f"texts/{split}/image_index has {txt['image_index'].shape[0]} rows, expected {n_txt}")
            if "tokens" in txt:
                last = int(txt["offsets"][-1])
                if last != txt["tokens"].shape[0]:
                    raise InputError(self.path, f"texts/{split}: offsets end at {last} but tokens has "
                                                f"{txt['tokens'].shape[0]} rows")
            self._check_finite(txt["pooled"], f"texts/{split}/pooled", sample_rows)
            if n_img is not None and n_txt:
                index = np.asarray(txt["image_index"][:])
                if index.max(initial=-1) >= n_img:
                    raise InputError(self.path, f"texts/{split}/image_index points past the {n_img} images")
        group = h5.get(f"relevance/{split}")
        for kind in (group.keys() if isinstance(group, h5py.Group) else ()):
            rel = group[kind]
            if txt is not None and n_img is not None and tuple(rel.shape) != (txt["pooled"].shape[0], n_img):
                raise InputError(self.path, f"relevance/{split}/{kind} has shape {tuple(rel.shape)}, expected "
                                 f"({txt['pooled'].shape[0]}, {n_img})")

    def _check_finite(self, ds: h5py.Dataset, name: str, sample_rows: int) -> None:
        if ds.shape[0] == 0:
            return
        rows = np.unique(np.linspace(0, ds.shape[0] - 1, num=min(sample_rows, ds.shape[0])).astype(np.int64))
        sample = ds[rows] if len(rows) < ds.shape[0] else ds[:]
        if not np.all(np.isfinite(sample)):
            raise InputError(self.path, f"{name} contains NaN or inf values")


_OPEN_STORES: dict[tuple[str, int, int], FeatureStore] = {}


def open_store(path: str | os.PathLike) -> FeatureStore:
    """A validated :class:`FeatureStore`, opened once per process and file version.

    Repeated runs in one process (``featvlr ablate``) share the store and the splits it has
    read into memory; a rewritten file (new size or mtime) is opened afresh.
    """
    p = Path(path)
    if not p.exists():
        return FeatureStore(p)  # raises the usual clear error
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _OPEN_STORES:
        _OPEN_STORES[key] = FeatureStore(p)
    return _OPEN_STORES[key]


class StoreSplit:
    """One split of a :class:`FeatureStore`: counts and chunked readers."""

    def __init__(self, store: FeatureStore, name: str):
        self.store = store
        self.name = name
        self._memory: dict[str, np.ndarray] = {}
        self._offsets: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"store": self.store, "name": self.name, "_memory": self._memory, "_offsets": self._offsets}

    def _ds(self, key: str) -> h5py.Dataset:
        return self.store.dataset(key)

    def _get(self, key: str):
        """The dataset, or its in-memory copy after :meth:`load_in_memory`."""
        return self._memory[key] if key in self._memory else self._ds(key)

    def has(self, key: str) -> bool:
        return self.store.has(key.format(split=self.name))

    def load_in_memory(self, keys: tuple[str, ...] | None = None) -> "StoreSplit":
        """Read the split's arrays into RAM (for caches that fit)."""
        keys = keys or tuple(k for k in (self.k_regions, self.k_lengths, self.k_global, self.k_tokens,
                                         self.k_pooled, self.k_image_index) if self.store.has(k))
        for key in keys:
            if key not in self._memory:
                self._memory[key] = self._ds(key)[:]
        return self

    # dataset names
    @property
    def k_regions(self) -> str: return f"images/{self.name}/regions"
    @property
    def k_lengths(self) -> str: return f"images/{self.name}/lengths"
    @property
    def k_global(self) -> str: return f"images/{self.name}/global"
    @property
    def k_tokens(self) -> str: return f"texts/{self.name}/tokens"
    @property
    def k_pooled(self) -> str: return f"texts/{self.name}/pooled"
    @property
    def k_image_index(self) -> str: return f"texts/{self.name}/image_index"

    # counts and shapes
    @property
    def n_images(self) -> int:
        for key in (self.k_regions, self.k_global):
            if self.store.has(key):
                return int(self._ds(key).shape[0])
        return 0

    @property
    def n_texts(self) -> int:
        return int(self._ds(self.k_pooled).shape[0]) if self.store.has(self.k_pooled) else 0

    @property
    def region_dim(self) -> int:
        return int(self._ds(self.k_regions).shape[-1])

    @property
    def n_regions(self) -> int:
        return int(self._ds(self.k_regions).shape[1])

    @property
    def text_dim(self) -> int:
        return int(self._ds(self.k_pooled).shape[-1])

    @property
    def has_regions(self) -> bool:
        return self.store.has(self.k_regions)

    @property
    def has_tokens(self) -> bool:
        return self.store.has(self.k_tokens)

    # readers
    def image_index(self) -> np.ndarray:
        """``[n_texts]`` int64: the image row of each caption."""
        return np.asarray(self._get(self.k_image_index)[:], dtype=np.int64)

    def captions_per_image(self) -> int:
        """5 for SCAN precomp splits; computed from the caption → image index."""
        n_img = self.n_images
        return self.n_texts // n_img if n_img else 0

    def regions(self, rows) -> np.ndarray:
        """Regions of the given image rows (a slice, or sorted/unsorted int indices)."""
        return _take(self._get(self.k_regions), rows)

    def region_lengths(self, rows) -> np.ndarray:
        if self.store.has(self.k_lengths):
            return np.asarray(_take(self._get(self.k_lengths), rows), dtype=np.int64)
        n = len(range(*rows.indices(self.n_images))) if isinstance(rows, slice) else len(rows)
        return np.full(n, self.n_regions, dtype=np.int64)

    def global_features(self, rows=slice(None)) -> np.ndarray:
        return _take(self._get(self.k_global), rows)

    def pooled(self, rows=slice(None)) -> np.ndarray:
        return _take(self._get(self.k_pooled), rows)

    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = np.asarray(self._ds(f"texts/{self.name}/offsets")[:], dtype=np.int64)
        return self._offsets

    def token_lengths(self) -> np.ndarray:
        off = self.offsets()
        return off[1:] - off[:-1]

    def tokens(self, rows) -> list[np.ndarray]:
        """Token features of the given captions, as a list of ``[L_c, Dt]`` arrays.

        Reads one contiguous span covering the rows when they are close together (the
        common case for sorted batches), else one read per caption.
        """
        off = self.offsets()
        rows = np.arange(self.n_texts)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        src = self._get(self.k_tokens)
        lo, hi = int(off[rows.min()]), int(off[rows.max() + 1])
        wanted = int((off[rows + 1] - off[rows]).sum())
        if isinstance(src, np.ndarray) or hi - lo <= 4 * wanted:
            block = src[lo:hi]
            return [np.asarray(block[off[r] - lo: off[r + 1] - lo]) for r in rows]
        return [np.asarray(src[off[r]: off[r + 1]]) for r in rows]

    def raw_captions(self) -> list[str]:
        ds = self._ds(f"texts/{self.name}/raw")
        return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[:]]

    def image_ids(self) -> list[str]:
        key = f"images/{self.name}/ids"
        if not self.store.has(key):
            return [str(i) for i in range(self.n_images)]
        return [s.decode() if isinstance(s, bytes) else str(s) for s in self._ds(key)[:]]

    def relevance_kinds(self) -> list[str]:
        """Names of the relevance matrices of the split (``rougeL`` first, then sorted)."""
        group = self.store.h5.get(f"relevance/{self.name}")
        kinds = sorted(group.keys()) if isinstance(group, h5py.Group) else []
        return sorted(kinds, key=lambda k: k != "rougeL")

    def relevance(self, kind: str = "rougeL") -> np.ndarray | None:
        """``[n_texts, n_images]`` float32 relevance, or None when the split has none."""
        key = f"relevance/{self.name}/{kind}"
        return np.asarray(self._ds(key)[:], dtype=np.float32) if self.store.has(key) else None

    def composed(self) -> dict[str, np.ndarray]:
        """All arrays of ``composed/<split>`` (empty dict when the split has none)."""
        key = f"composed/{self.name}"
        if not self.store.has(key):
            return {}
        out = {}
        for name, ds in self.store.h5[key].items():
            arr = ds[:]
            if ds.dtype.kind == "O":
                flat = [s.decode() if isinstance(s, bytes) else str(s) for s in arr.ravel()]
                arr = np.array(flat, dtype=object).reshape(arr.shape)
            out[name] = arr
        return out

    def iter_image_chunks(self, chunk: int = 1024) -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, self.n_images, chunk):
            sl = slice(start, min(start + chunk, self.n_images))
            yield sl, self.regions(sl)


def _take(ds, rows):
    """Index an h5py dataset or array by a slice or by int indices (any order, repeats allowed)."""
    if isinstance(rows, slice):
        return np.asarray(ds[rows])
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(ds, np.ndarray):
        return ds[rows]
    if len(rows) == 0:
        return np.empty((0,) + tuple(ds.shape[1:]), dtype=ds.dtype)
    order = np.argsort(rows, kind="stable")
    uniq, inverse = np.unique(rows[order], return_inverse=True)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 4 * len(uniq):
        block = np.asarray(ds[lo:hi])[uniq - lo]
    else:
        block = np.asarray(ds[uniq])
    out = np.empty((len(rows),) + block.shape[1:], dtype=block.dtype)
    out[order] = block[inverse]
    return out
