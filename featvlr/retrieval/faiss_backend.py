"""FAISS backend (top-k lists only) for galleries beyond exact search."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval.tensors import _index_matrix, as_index, as_tensor

FAISS_INDEXES = ("flat", "ivf", "hnsw")


def import_faiss():
    """The ``faiss`` module, or a clear error naming the package to install."""
    try:
        import faiss
    except ImportError:
        raise FeatvlrError("the FAISS backend needs faiss (pip install faiss-cpu)") from None
    return faiss


def build_faiss_index(gallery: np.ndarray, index: str = "flat", *, nlist: int | None = None, nprobe: int = 16,
                      hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
                      train_size: int = 100_000, seed: int = 0) -> Any:
    """A FAISS inner-product index over ``gallery [G, d]`` (float32, C-contiguous), vectors
    added; the index types and options of :func:`faiss_search`."""
    faiss = import_faiss()
    if gallery.ndim != 2:
        raise FeatvlrError(f"a FAISS gallery must be [n, d], got shape {gallery.shape}")
    n, d = gallery.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = int(nlist or max(1, min(n // 39, int(4 * math.sqrt(n)))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = gallery if n <= train_size else gallery[np.sort(rng.choice(n, train_size, replace=False))]
        idx.train(sample)
        idx.nprobe = min(int(nprobe), nlist)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(ef_construction)
        idx.hnsw.efSearch = int(ef_search)
    else:
        raise FeatvlrError(f"unknown FAISS index {index!r} (known: {', '.join(FAISS_INDEXES)})")
    idx.add(gallery)
    return idx


def faiss_search(queries: Any, gallery: Any, k: int, *, index: str = "flat", nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
                 train_size: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search with FAISS, for galleries beyond exact search.

    Args:
        queries, gallery: ``[Q, d]`` and ``[G, d]`` embeddings (L2-normalised for cosine).
        k: list length.
        index: ``"flat"`` (exact ``IndexFlatIP``), ``"ivf"`` (``IndexIVFFlat``, ``nlist``
            cells, default ``4 * sqrt(G)``, ``nprobe`` probed) or ``"hnsw"``
            (``IndexHNSWFlat``, ``hnsw_m`` links, ``ef_search``).
        train_size: gallery vectors sampled to train IVF.

    Returns:
        ``scores [Q, k]`` float32 and ``ids [Q, k]`` int64 numpy arrays (ids -1 where fewer
        than k were found).
    """
    q = np.ascontiguousarray(as_tensor(queries).float().cpu().numpy())
    g = np.ascontiguousarray(as_tensor(gallery).float().cpu().numpy())
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise FeatvlrError(f"embeddings must be [n, d] with the same d; got {q.shape} and {g.shape}")
    k = min(int(k), g.shape[0])
    idx = build_faiss_index(g, index, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                            ef_search=max(int(ef_search), k), train_size=train_size, seed=seed)
    scores, ids = idx.search(q, k)
    return scores, ids.astype(np.int64)


def ranks_from_topk(ids: Any, positives: Any) -> torch.Tensor:
    """0-based rank of the first positive in each top-k list; ``k`` (the list length) when no
    positive is in the list (a miss for every R@K with K <= k); -1 when a query has no positive.

    ``ids`` is ``[Q, k]`` gallery indices, ``positives`` ``[Q]`` or ``[Q, P]`` (``-1`` pads).
    """
    ids_t = as_index(ids)
    pos = _index_matrix(positives, ids_t.shape[0], ids_t.device, "positives")
    k = ids_t.shape[1]
    hit = ((ids_t[:, :, None] == pos[:, None, :]) & (pos[:, None, :] >= 0) & (ids_t[:, :, None] >= 0)).any(-1)
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((ids_t.shape[0],), k, dtype=torch.long))
    return torch.where((pos >= 0).any(1), first, torch.full_like(first, -1))
