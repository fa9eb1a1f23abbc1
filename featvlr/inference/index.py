"""The gallery index of a run on a cache split: the method's outputs for every image and text
of the split (composed: every gallery image), built once and kept beside the run.

``<run>/index/<split>.pt`` holds the outputs (tensors, or dicts of tensors for pairwise
methods) with a key naming the checkpoint and the cache (path, size, modification time):
a retrained run or a rewritten cache gets a fresh index. A FAISS index over the global
image or text embeddings (:class:`FaissIndex`) is built on demand for large galleries and
kept beside it (``<split>-<side>-<kind>-<key>.faiss``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.core.fileio import atomic_path
from featvlr.retrieval import as_tensor
from featvlr.retrieval.faiss_backend import build_faiss_index, import_faiss

INDEX_FORMAT = 1


def _stat(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def index_key(checkpoint: Path, cache: Path, split: str, max_tokens: int) -> dict[str, Any]:
    """What an index depends on: the checkpoint and cache files, the split, the truncation."""
    return {"format": INDEX_FORMAT, "checkpoint": _stat(checkpoint), "cache": _stat(cache), "split": split,
            "max_tokens": int(max_tokens)}


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _to(out: Any, device: torch.device | str) -> Any:
    if out is None:
        return None
    if isinstance(out, dict):
        return {k: v.to(device) for k, v in out.items()}
    return out.to(device)


@dataclass
class GalleryIndex:
    """Encoder outputs of one split: ``images`` (``[N, d]`` or a dict of tensors) and, for a
    cross-modal method, ``texts``; ``key`` says what they were built from (None: not saved)."""

    split: str
    images: Any
    texts: Any = None
    key: dict[str, Any] | None = None
    path: Path | None = None
    built: bool = False
    _faiss: dict[tuple[str, str], FaissIndex] = field(default_factory=dict, repr=False)
    _finite: dict[tuple, bool] = field(default_factory=dict, repr=False)

    def finite(self, side: str, embeddings: torch.Tensor) -> bool:
        """Whether the ``side`` embeddings hold no NaN or inf (checked once per tensor)."""
        key = (side, embeddings.data_ptr(), tuple(embeddings.shape))
        if key not in self._finite:
            self._finite[key] = bool(torch.isfinite(embeddings).all())
        return self._finite[key]

    def faiss(self, side: str, embeddings: torch.Tensor, kind: str = "flat", **options: Any) -> FaissIndex:
        """The FAISS index of the ``side`` (``"images"`` or ``"texts"``) embeddings, built once
        (and read from / written beside the saved index)."""
        if (side, kind) in self._faiss:
            return self._faiss[(side, kind)]
        file = None
        if self.path is not None and self.key is not None:
            file = self.path.with_name(f"{self.split}-{side}-{kind}-{_key_hash(self.key)}.faiss")
        index = FaissIndex.load(file) if file is not None and file.exists() else None
        if index is None or index.ntotal != embeddings.shape[0]:
            index = FaissIndex(embeddings, kind, **options)
            if file is not None:
                index.save(file)
        self._faiss[(side, kind)] = index
        return index


def save_index(index: GalleryIndex, path: Path) -> None:
    """Write ``index`` (CPU tensors) atomically to ``path``."""
    payload = {"key": index.key, "split": index.split, "images": _to(index.images, "cpu"),
               "texts": _to(index.texts, "cpu")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_index(path: Path, key: dict[str, Any], device: torch.device | str) -> GalleryIndex | None:
    """The index saved at ``path`` when it was built from ``key``, else None."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable index is rebuilt
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    return GalleryIndex(payload["split"], _to(payload["images"], device), _to(payload.get("texts"), device),
                        key=key, path=path)


class FaissIndex:
    """A FAISS inner-product index over ``[G, d]`` embeddings, built once and searched many
    times; the index types and defaults of :func:`featvlr.retrieval.faiss_search`.

    Args:
        embeddings: the gallery (L2-normalised for cosine scores).
        kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
        nlist, nprobe, hnsw_m, ef_construction, ef_search, train_size, seed: as in
            :func:`~featvlr.retrieval.faiss_search`.
    """

    def __init__(self, embeddings: Any = None, kind: str = "flat", *, nlist: int | None = None, nprobe: int = 16,
                 hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128, train_size: int = 100_000,
                 seed: int = 0, _index: Any = None):
        import_faiss()  # a clear error before any work when faiss is missing
        self.kind = kind
        if _index is not None:
            self.index = _index
            return
        g = np.ascontiguousarray(as_tensor(embeddings).float().cpu().numpy())
        self.index = build_faiss_index(g, kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                                       ef_construction=ef_construction, ef_search=ef_search,
                                       train_size=train_size, seed=seed)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: Any, k: int, *, exclude: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [Q, k], rows [Q, k])`` CPU tensors, rows ``-1`` where fewer were found;
        ``exclude`` (``[Q]`` rows, ``-1`` = none) is dropped from each list (one extra item is
        fetched for it)."""
        q = np.ascontiguousarray(as_tensor(queries).float().cpu().numpy())
        k = min(int(k), self.ntotal)
        extra = 1 if exclude is not None else 0
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(int(self.index.hnsw.efSearch), k + extra)
        scores, ids = self.index.search(q, min(k + extra, self.ntotal))
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64))
        if exclude is not None:
            exc = torch.as_tensor(np.asarray(exclude, dtype=np.int64)).reshape(-1, 1)
            drop = (ids == exc) & (exc >= 0)
            order = torch.argsort(drop.to(torch.int8), dim=1, stable=True)  # kept ones first, in order
            ids, scores = ids.gather(1, order), scores.gather(1, order)
            ids = ids.masked_fill(drop.gather(1, order), -1)
        ids, scores = ids[:, :k], scores[:, :k]
        return scores.masked_fill(ids < 0, float("-inf")), ids

    def save(self, path: Path) -> None:
        faiss = import_faiss()
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: Path) -> FaissIndex | None:
        faiss = import_faiss()
        try:
            idx = faiss.read_index(str(path))
        except Exception:  # noqa: BLE001 - an unreadable file is rebuilt
            return None
        kind = "hnsw" if hasattr(idx, "hnsw") else "ivf" if hasattr(idx, "nprobe") else "flat"
        return cls(kind=kind, _index=idx)

