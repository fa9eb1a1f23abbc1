"""A full integrity scan of a feature cache (``featvlr info --check``).

:meth:`featvlr.cache.store.FeatureStore.validate` runs on every open: format version, ranks and
counts, and NaN/inf in a sample of rows. :func:`check_cache` reads everything, chunk by
chunk: every floating-point value must be finite, every dataset of a split must have the
shape the layout gives it, offsets must rise from 0, and index datasets must point inside
the split. The first problem is raised as an :class:`~featvlr.core.errors.InputError` naming the
split, the dataset and the first bad row (for ``texts/<split>/tokens``, also its caption).

Example::

    report = check_cache("features/f30k.h5")   # raises on the first bad value
    print(report.datasets, report.values)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from featvlr.core.errors import InputError

# Rows read at once: about this many bytes per block.
BLOCK_BYTES = 64 << 20

# Rank of each dataset of a split (the layout in featvlr.cache.store); others are not checked for rank.
RANKS = {"images/regions": 3, "images/lengths": 1, "images/global": 2, "images/global_aug": 3, "images/ids": 1,
         "texts/tokens": 2, "texts/offsets": 1, "texts/pooled": 2, "texts/image_index": 1, "texts/raw": 1,
         "relevance/rougeL": 2}


@dataclass
class CheckReport:
    """What a full scan read: datasets and floating-point values checked."""

    datasets: int = 0
    values: int = 0


def _rows_per_block(ds: h5py.Dataset) -> int:
    row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    rows = max(1, BLOCK_BYTES // row)
    if ds.chunks:  # whole chunks per read
        rows = max(ds.chunks[0], rows - rows % ds.chunks[0])
    return rows


def first_bad_row(ds: h5py.Dataset, path: str | os.PathLike, name: str) -> tuple[int | None, int]:
    """``(row, values)``: the first row of ``ds`` with a NaN or inf (None if none), and how
    many values were read; an unreadable block is an :class:`InputError`."""
    n = ds.shape[0] if ds.ndim else 0
    step = _rows_per_block(ds)
    values = 0
    for start in range(0, n, step):
        stop = min(n, start + step)
        try:
            block = np.asarray(ds[start:stop])
        except (OSError, ValueError) as exc:
            raise InputError(path, f"{name}: rows {start}-{stop - 1} cannot be read (corrupt file?): {exc}") from None
        values += block.size
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite)), values
    return None, values


def _check_split(h5: h5py.File, path, split: str, report: CheckReport) -> None:
    shapes: dict[str, tuple[int, ...]] = {}
    for group in ("images", "texts", "relevance", "composed"):
        grp = h5.get(f"{group}/{split}")
        if grp is None:
            continue
        for key, ds in grp.items():
            if not isinstance(ds, h5py.Dataset):
                continue
            name = f"{group}/{split}/{key}"
            rank = RANKS.get(f"{group}/{key}")
            if rank is not None and ds.ndim != rank:
                raise InputError(path, f"split {split!r}, dataset {name}: shape {ds.shape}, expected rank {rank}")
            shapes[f"{group}/{key}"] = tuple(ds.shape)
            report.datasets += 1
            if ds.dtype.kind != "f":
                continue
            row, values = first_bad_row(ds, path, name)
            report.values += values
            if row is not None:
                where = f"row {row}"
                if key == "tokens" and "offsets" in grp:
                    caption = int(np.searchsorted(np.asarray(grp["offsets"][:]), row, side="right")) - 1
                    where += f" (caption {caption})"
                raise InputError(path, f"split {split!r}, dataset {name}: NaN or inf values, first at {where}")
    _check_counts(h5, path, split, shapes)


def _check_counts(h5: h5py.File, path, split: str, shapes: dict[str, tuple[int, ...]]) -> None:
    n_img = (shapes.get("images/regions") or shapes.get("images/global") or (None,))[0]
    n_txt = (shapes.get("texts/pooled") or (None,))[0]
    want = {"images/lengths": (n_img,), "images/ids": (n_img,), "images/global": (n_img,),
            "images/global_aug": (n_img,), "texts/raw": (n_txt,), "texts/image_index": (n_txt,),
            "texts/offsets": (None if n_txt is None else n_txt + 1,), "relevance/rougeL": (n_txt, n_img)}
    for key, expected in want.items():
        got = shapes.get(key)
        if got is None or any(e is None for e in expected):
            continue
        if tuple(got[:len(expected)]) != expected:
            what = f"{expected[0]} rows" if len(expected) == 1 else f"shape {expected}"
            raise InputError(path, f"split {split!r}, dataset {key.replace('/', f'/{split}/', 1)}: shape {got}, "
                             f"expected {what}")
    regions, tokens, pooled = shapes.get("images/regions"), shapes.get("texts/tokens"), shapes.get("texts/pooled")
    if tokens is not None and pooled is not None and tokens[1] != pooled[1]:
        raise InputError(path, f"split {split!r}, dataset texts/{split}/tokens: width {tokens[1]}, but "
                         f"texts/{split}/pooled has {pooled[1]}")
    txt = h5.get(f"texts/{split}")
    if txt is not None and "offsets" in txt:
        off = np.asarray(txt["offsets"][:], dtype=np.int64)
        bad = np.flatnonzero(np.diff(off) < 0)
        if len(off) and off[0] != 0:
            raise InputError(path, f"split {split!r}, dataset texts/{split}/offsets: starts at {off[0]}, not 0")
        if len(bad):
            raise InputError(path, f"split {split!r}, dataset texts/{split}/offsets: decreases at row {bad[0] + 1}")
        if tokens is not None and len(off) and off[-1] != tokens[0]:
            raise InputError(path, f"split {split!r}, dataset texts/{split}/offsets: ends at {off[-1]}, but "
                             f"tokens has {tokens[0]} rows")
    if txt is not None and "image_index" in txt and n_img is not None:
        index = np.asarray(txt["image_index"][:], dtype=np.int64)
        bad = np.flatnonzero((index < -1) | (index >= n_img))
        if len(bad):
            raise InputError(path, f"split {split!r}, dataset texts/{split}/image_index: row {bad[0]} points to "
                             f"image {index[bad[0]]}, outside the {n_img} images")
    img = h5.get(f"images/{split}")
    if img is not None and "lengths" in img and regions is not None:
        lengths = np.asarray(img["lengths"][:], dtype=np.int64)
        bad = np.flatnonzero((lengths < 0) | (lengths > regions[1]))
        if len(bad):
            raise InputError(path, f"split {split!r}, dataset images/{split}/lengths: row {bad[0]} has "
                             f"{lengths[bad[0]]} regions, outside 0-{regions[1]}")


def check_cache(store) -> CheckReport:
    """Scan every dataset of every split of ``store`` (a :class:`~featvlr.cache.store.FeatureStore`);
    raise an :class:`InputError` at the first problem (see the module docstring)."""
    report = CheckReport()
    for split in store.splits():
        _check_split(store.h5, store.path, split, report)
    return report
