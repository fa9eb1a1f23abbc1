"""Image features keyed by image name (``.npy`` + names, ``.npz``, ``.h5``), and the augmented
views of a split's reference images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featvlr.core.errors import InputError
from featvlr.core.fileio import has_npy_header
from featvlr.extract.composed_readers import ComposedSplit, load_json


class FeatureTable:
    """Image features keyed by image name, read from ``.npy`` (+ names), ``.npz`` or ``.h5``.

    Args:
        path: the features file.
        names: for an ``.npy``: the names file (one per line, or a JSON list).
        rank: 2 for global vectors ``[N, Dg]``, 3 for augmented views ``[N, K, Dg]``.
    """

    def __init__(self, path: str | os.PathLike, names: str | os.PathLike | None = None, *, rank: int = 2):
        self.path = Path(path)
        self.rank = rank
        if not self.path.is_file():
            raise InputError(self.path, "no such features file")
        suffix = self.path.suffix.lower()
        if suffix == ".npy":
            self.names, self.array = self._from_npy(names)
        elif suffix == ".npz":
            self.names, self.array = self._from_mapping(self._npz_items())
        elif suffix in (".h5", ".hdf5"):
            self.names, self.array = self._from_mapping(self._h5_items())
        else:
            raise InputError(self.path, "unsupported features file: use .npy (with --image-names), .npz or .h5")
        if self.array.dtype.kind != "f":
            raise InputError(self.path, f"features must be floating point, the file holds {self.array.dtype}")
        if self.array.ndim != rank:
            want = "[N, Dg]" if rank == 2 else "[N, K, Dg]"
            raise InputError(self.path, f"features have shape {tuple(self.array.shape)}; expected {want}")
        if len(self.names) != self.array.shape[0]:
            raise InputError(self.path, f"{self.array.shape[0]} feature rows but {len(self.names)} names")
        bad = ~np.isfinite(self.array)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise InputError(self.path, f"the features of {self.names[row]!r} contain NaN or inf values")
        self.index = {n: i for i, n in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise InputError(self.path, "image names are not unique")
        self._by_stem: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.array.shape[-1])

    def _from_npy(self, names):
        if names is None:
            raise InputError(self.path, "an .npy features file needs --image-names (one name per row)")
        names_path = Path(names)
        if not names_path.is_file():
            raise InputError(names_path, "no such image-names file")
        if names_path.suffix.lower() == ".json":
            listed = load_json(names_path)
            if not (isinstance(listed, list) and all(isinstance(x, str) for x in listed)):
                raise InputError(names_path, "expected a JSON list of image names")
        else:
            try:
                text = names_path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(names_path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            listed = [line.strip() for line in text.split("\n")]
            while listed and listed[-1] == "":
                listed.pop()
            if "" in listed:
                raise InputError(names_path, f"line {listed.index('') + 1} is empty")
        if not has_npy_header(self.path):
            raise InputError(self.path, "not a numpy array file: it does not start with the .npy header (save the "
                                        "features with numpy.save)")
        try:
            arr = np.load(self.path, allow_pickle=False)
        except Exception as exc:
            raise InputError(self.path, f"not a readable .npy array ({exc})") from None
        if arr.ndim >= 1 and len(listed) != arr.shape[0]:
            raise InputError(names_path, f"has {len(listed)} names for the {arr.shape[0]} rows of {self.path.name}")
        return listed, arr

    def _npz_items(self):
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:
            raise InputError(self.path, f"not a readable .npz archive ({exc})") from None

    def _h5_items(self):
        import h5py

        items: dict[str, np.ndarray] = {}
        try:
            with h5py.File(self.path, "r") as f:
                def visit(name, obj):
                    if isinstance(obj, h5py.Dataset):
                        items[name] = obj[()]
                f.visititems(visit)
        except OSError as exc:
            raise InputError(self.path, f"not a readable HDF5 file ({exc})") from None
        return items

    def _from_mapping(self, items: dict[str, np.ndarray]):
        if "names" in items and ("features" in items or "feats" in items):
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(items["names"]).ravel()]
            return names, np.asarray(items.get("features", items.get("feats")))
        if not items:
            raise InputError(self.path, "holds no arrays")
        names = list(items)
        shapes = {np.asarray(v).shape for v in items.values()}
        if len(shapes) != 1:
            raise InputError(self.path, f"per-image arrays differ in shape ({sorted(shapes)[:3]}...)")
        return names, np.stack([np.asarray(items[n]) for n in names])

    def lookup(self, names: list[str]) -> np.ndarray:
        """Rows of ``names`` (exact name, else an unambiguous file-stem match)."""
        rows = np.empty(len(names), dtype=np.int64)
        missing = []
        for i, name in enumerate(names):
            r = self.index.get(name)
            if r is None:
                r = self._stem_index().get(_stem(name))
            if r is None or r < 0:
                missing.append(name)
            else:
                rows[i] = r
        if missing:
            raise InputError(self.path, f"{len(missing)} image(s) have no features, e.g. {missing[:3]}")
        return rows

    def covers(self, names: list[str]) -> np.ndarray:
        """Boolean mask: which ``names`` this table has."""
        stems = self._stem_index()
        return np.array([n in self.index or stems.get(_stem(n), -1) >= 0 for n in names], dtype=bool)

    def _stem_index(self) -> dict[str, int]:
        if self._by_stem is None:
            self._by_stem = {}
            for i, n in enumerate(self.names):
                s = _stem(n)
                self._by_stem[s] = -1 if s in self._by_stem else i   # -1 marks an ambiguous stem
        return self._by_stem


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def aug_coverage(aug: FeatureTable, split: ComposedSplit, reference: np.ndarray) -> np.ndarray | None:
    """Which gallery images have views; None when the file has none of the split's references.

    Raises :class:`InputError` when it has some of them but not all.
    """
    has = aug.covers(split.gallery)
    ref_rows = np.unique(reference)
    if not has[ref_rows].any():
        return None
    if not has[ref_rows].all():
        missing = [split.gallery[i] for i in ref_rows[~has[ref_rows]]][:3]
        raise InputError(aug.path, f"split {split.name!r}: some reference images have no augmented views, "
                                   f"e.g. {missing}")
    return has


def aug_views(aug: FeatureTable, split: ComposedSplit, has: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """``[N, K, Dg]`` views for the split's gallery; images without views repeat their plain vector."""
    k = aug.array.shape[1]
    views = np.repeat(np.asarray(feats, dtype=np.float32)[:, None, :], k, axis=1)
    idx = np.flatnonzero(has)
    views[idx] = aug.array[aug.lookup([split.gallery[i] for i in idx])]
    return views
