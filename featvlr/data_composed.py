"""Composed-retrieval batches and evaluation over a composed split of the feature cache.

A composed split (CIRR, FashionIQ, Shoes; layout written by :mod:`featvlr.sources.composed`)
holds frozen global image features ``images/<split>/global [N, Dg]`` (optionally ``K``
augmented views ``images/<split>/global_aug [N, K, Dg]``), modifier-text vectors
``texts/<split>/pooled`` and the queries ``composed/<split>/reference``, ``target`` (``-1``
where unknown, CIRR test1), ``subsets [Q, 6]`` (CIRR image sets, ``-1`` padded),
``pair_ids`` and ``category`` (FashionIQ); ``composed/<split>/text`` optionally maps each
query to its text row(s) (see :class:`ComposedQueries`).

Batch keys (all ``[B, ...]`` tensors):

================  ============  ==========================================================
key               dtype         meaning
================  ============  ==========================================================
reference_image   float [B,Dg]  frozen global feature of the reference image
reference_aug     float [B,Dg]  one of the K cached augmented views of the reference
                                (training only, when the cache has views)
pooled_text       float [B,Dt]  modifier text vector
target_image      float [B,Dg]  frozen global feature of the target (training only)
reference_ids     long          reference image row in the split
target_ids        long          target image row (-1: unknown)
query_ids         long          query row in the split
================  ============  ==========================================================

:class:`ComposedBatches` is a map-style dataset *of batches* with the interface of
:class:`featvlr.data.CaptionBatches`: item ``b`` of epoch ``e`` is the ``b``-th slice of a
permutation of the training queries seeded by ``(seed, e)``; the augmented view of each
reference and the text variant of each query are drawn from a generator seeded by
``(seed, e, b, rank)``, so batches do not depend on the number of DataLoader workers and a
resumed run sees the same ones. Under DDP rank ``r`` takes the ``r``-th contiguous share of
every global batch.

:func:`embed_composed_split` embeds the queries (``method.encode_queries``) and the gallery
(``method.encode_images``); :func:`evaluate_composed_method` ranks them exactly by chunks
with each dataset's protocol (``METHODS.md`` 2.4, metrics from
:func:`featvlr.scenarios.evaluate_composed`), FashionIQ's per-category galleries included.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.data import SeededBatches, iter_image_batches, move_to, to_tensors
from featvlr.errors import InputError
from featvlr.retrieval import DEFAULT_CHUNK_ELEMENTS
from featvlr.store import FeatureStore, StoreSplit, _take

# Cached augmented views are read into RAM when they take at most this many bytes.
AUG_IN_MEMORY_BYTES = 2 << 30


@dataclass
class ComposedQueries:
    """The query arrays of one composed split, read once.

    ``text`` is ``[Q, V]`` rows of ``texts/<split>/pooled``: ``V = 1`` for one modifier text
    per query; FashionIQ training queries may carry ``V`` variants (the random caption
    concatenation), one drawn per step, column 0 being the evaluation text. Without a
    ``composed/<split>/text`` dataset, query ``q`` uses text row ``q``.
    """

    reference: np.ndarray
    target: np.ndarray
    text: np.ndarray
    subsets: np.ndarray | None = None
    pair_ids: np.ndarray | None = None
    category: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.reference)


def read_queries(split: StoreSplit) -> ComposedQueries:
    """Read ``composed/<split>`` (an :class:`InputError` when the split has none)."""
    arrays = split.composed()
    if not arrays or "reference" not in arrays or "target" not in arrays:
        raise InputError(split.store.path, f"split {split.name!r} has no composed queries "
                         f"(composed/{split.name}/reference and target)")
    reference = np.asarray(arrays["reference"], dtype=np.int64)
    target = np.asarray(arrays["target"], dtype=np.int64)
    n = len(reference)
    if "text" in arrays:
        text = np.asarray(arrays["text"], dtype=np.int64)
        text = text[:, None] if text.ndim == 1 else text
    else:
        text = np.arange(n, dtype=np.int64)[:, None]
    if text.shape[0] != n or target.shape != (n,):
        raise InputError(split.store.path, f"composed/{split.name}: reference, target and text disagree on the "
                         "number of queries")
    n_img, n_txt = split.n_images, split.n_texts
    if n and (reference.max() >= n_img or reference.min() < 0 or target.max() >= n_img or target.min() < -1):
        raise InputError(split.store.path, f"composed/{split.name}: reference/target rows outside the "
                         f"{n_img} images")
    if n and (text.max() >= n_txt or text.min() < -1 or (text[:, 0] < 0).any()):
        raise InputError(split.store.path, f"composed/{split.name}: text rows outside the {n_txt} texts")
    subsets = np.asarray(arrays["subsets"], dtype=np.int64) if "subsets" in arrays else None
    return ComposedQueries(reference=reference, target=target, text=text, subsets=subsets,
                           pair_ids=arrays.get("pair_ids"), category=arrays.get("category"))


class ComposedBatches(SeededBatches):
    """Epoch of composed training batches (one item = one whole batch).

    Args:
        split: the training split (global image features, texts, composed queries).
        batch_size: the global batch size (all ranks together).
        seed: base seed of the permutation, the augmented-view and the text-variant draws.
        rank, world_size: this process's share of every global batch under DDP.
        max_batches: cap on batches per epoch (0: all).
        use_aug: pass ``reference_aug`` when the cache has views (default True).
    """

    def __init__(self, split: StoreSplit, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_batches: int = 0, use_aug: bool = True):
        self.split = split
        q = read_queries(split)
        keep = np.nonzero(q.target >= 0)[0]  # training needs a target
        self.queries = q
        self.rows = keep
        self._init_batches(keep, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           max_batches=max_batches, what=f"composed queries with a target in split {split.name!r}")
        self.global_ = np.asarray(split.global_features(), dtype=np.float32)
        self.pooled = np.asarray(split.pooled(), dtype=np.float32)
        self.n_variants = (q.text >= 0).sum(1)
        aug_key = f"images/{split.name}/global_aug"
        self.aug: Any = None
        if use_aug and split.store.has(aug_key):
            ds = split.store.dataset(aug_key)
            if ds.ndim != 3 or ds.shape[0] != split.n_images or ds.shape[2] != self.global_.shape[1]:
                raise InputError(split.store.path, f"{aug_key} has shape {tuple(ds.shape)}, expected "
                                 f"({split.n_images}, K, {self.global_.shape[1]})")
            self.aug = ds[:] if ds.size * ds.dtype.itemsize <= AUG_IN_MEMORY_BYTES else None
            self.aug_key = aug_key
            self.n_aug = int(ds.shape[1])
            self.has_aug = self.n_aug > 0
        else:
            self.has_aug = False

    def query_rows(self, b: int) -> np.ndarray:
        """The queries of global batch ``b`` that this rank handles."""
        return self.batch_rows(b)

    def _aug_views(self, refs: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.aug is not None:
            return self.aug[refs, k]
        views = _take(self.split.store.dataset(self.aug_key), refs)
        return views[np.arange(len(refs)), k]

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        if not 0 <= b < self.n_batches:
            raise IndexError(b)
        rows = self.query_rows(b)
        rng = np.random.default_rng([self.seed, self.epoch, b, 1 + self.rank])
        q = self.queries
        refs, tgts = q.reference[rows], q.target[rows]
        variant = (rng.random(len(rows)) * self.n_variants[rows]).astype(np.int64)
        text_rows = q.text[rows, variant]
        batch = {
            "reference_image": self.global_[refs],
            "target_image": self.global_[tgts],
            "pooled_text": self.pooled[text_rows],
            "reference_ids": refs,
            "target_ids": tgts,
            "query_ids": rows,
        }
        if self.has_aug:
            k = rng.integers(0, self.n_aug, size=len(rows))
            batch["reference_aug"] = np.asarray(self._aug_views(refs, k), dtype=np.float32)
        return to_tensors(batch)


def iter_query_batches(split: StoreSplit, batch_size: int = 256, device: torch.device | str = "cpu",
                       queries: ComposedQueries | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Query batches of a composed split in row order (for ``encode_queries``): the reference
    image feature, the evaluation text (variant 0) and the ids."""
    q = queries if queries is not None else read_queries(split)
    for start in range(0, q.n, batch_size):
        rows = np.arange(start, min(start + batch_size, q.n))
        refs = q.reference[rows]
        batch = {
            "reference_image": np.asarray(split.global_features(refs), dtype=np.float32),
            "pooled_text": np.asarray(split.pooled(q.text[rows, 0]), dtype=np.float32),
            "reference_ids": refs,
            "target_ids": q.target[rows],
            "query_ids": rows,
        }
        yield move_to(to_tensors(batch), device)


@torch.no_grad()
def embed_composed_split(method: Any, split: StoreSplit, *, batch_size: int = 512,
                         device: torch.device | str = "cpu", queries: ComposedQueries | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(queries [Q, d], gallery [N, d])`` embeddings, in row order, method in eval mode."""
    q = queries if queries is not None else read_queries(split)
    was_training = method.training
    method.eval()
    try:
        qs = [method.encode_queries(b) for b in iter_query_batches(split, batch_size, device, q)]
        gs = [method.encode_images(b) for b in iter_image_batches(split, batch_size, device)]
    finally:
        method.train(was_training)
    return torch.cat(qs).float(), torch.cat(gs).float()


# --------------------------------------------------------------------------------------
# evaluation (metrics: featvlr.scenarios.evaluate_composed)

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def composed_protocol(dataset: str) -> str:
    """The protocol of a dataset name: ``"fashioniq"``, ``"shoes"`` or ``"cirr"`` (CIRR and
    the CIRR-layout demo, or any other name)."""
    name = dataset.lower().replace("-", "").replace("_", "")
    if name.startswith("fashioniq") or name == "fiq":
        return "fashioniq"
    if name.startswith("shoes"):
        return "shoes"
    return "cirr"


def fashioniq_splits(store: FeatureStore, name: str) -> dict[str, str]:
    """Category -> split name for a FashionIQ evaluation split: its per-category splits
    ``<name>_<category>`` (each its own gallery), else ``name`` itself."""
    splits = store.splits()
    per_cat = {s[len(name) + 1:]: s for s in splits if s.startswith(name + "_") and store.has(f"composed/{s}")}
    if per_cat:
        return dict(sorted(per_cat.items()))
    if store.has(f"composed/{name}"):
        return {"": name}
    raise InputError(store.path, f"no FashionIQ split {name!r} nor per-category splits {name}_<category> "
                     f"(the cache has: {', '.join(splits) or 'none'})")


def evaluate_composed_method(method: Any, split: StoreSplit | str, *, dataset: str, batch_size: int = 512,
                             device: torch.device | str = "cpu", store: FeatureStore | None = None,
                             chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, submission_dir: str | Path | None = None,
                             curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Composed-retrieval metrics of ``method`` on ``split`` with ``dataset``'s protocol.

    Args:
        method: a composed :class:`~featvlr.methods.base.Method` (``encode_queries``,
            ``encode_images``); put in eval mode for the call.
        split: a :class:`~featvlr.store.StoreSplit`, or a split name together with ``store``.
            For FashionIQ the name may be the prefix of per-category splits (``val`` for
            ``val_dress``, ``val_shirt``, ``val_toptee``; each category is its own gallery).
        dataset: ``cirr`` (also the demo), ``fashioniq`` or ``shoes`` (:func:`composed_protocol`).
        batch_size, device: embedding batches.
        chunk_elements: most query x gallery scores held at once while ranking.
        submission_dir: on a CIRR split without targets (test1), write the two test-server
            files there (:func:`featvlr.scenarios.cirr_submission`).
        curves: filled with the R@1..50 curve (``composed``; FashionIQ ``composed_<category>``).

    Returns:
        The keys of :func:`featvlr.scenarios.evaluate_composed` (percent, prefixed
        ``composed/``): CIRR ``R@1/5/10/50``, ``Rsubset@1/2/3``, ``recall_avg``,
        ``arithmetic_mean``, ``harmonic_mean``, ``geometric_mean``; Shoes ``R@1/10/50``,
        ``recall_mean``; FashionIQ ``<category>_R@10``, ``<category>_R@50``, their means
        ``R@10``, ``R@50`` and ``average_recall``. Empty for a split without targets.
    """
    from featvlr.scenarios import average_fashioniq, cirr_submission, evaluate_composed, write_cirr_submission

    protocol = composed_protocol(dataset)
    if isinstance(split, str):
        if store is None:
            raise ValueError("pass store= with a split name")
        name = split
    else:
        store, name = split.store, split.name
    if protocol == "fashioniq":
        names = fashioniq_splits(store, name)
    else:
        names = {"": name}
    per_split: dict[str, dict[str, float]] = {}
    for cat, split_name in names.items():
        sp = split if isinstance(split, StoreSplit) and split_name == split.name else StoreSplit(store, split_name)
        comp = sp.composed()
        if not comp:
            raise InputError(store.path, f"split {split_name!r} has no composed data")
        q_emb, g_emb = embed_composed_split(method, sp, batch_size=batch_size, device=device)
        part: dict[str, list[float]] = {}
        res = evaluate_composed(q_emb, g_emb, comp, protocol=protocol, chunk_elements=chunk_elements, curves=part)
        if curves is not None:
            curves.update({(f"{k}_{cat}" if cat else k): v for k, v in part.items()})
        if not res and submission_dir is not None and "subsets" in comp:
            recall, subset = cirr_submission(q_emb, g_emb, comp, sp.image_ids(), chunk_elements=chunk_elements)
            write_cirr_submission(submission_dir, recall, subset, name=split_name)
        per_split[cat] = res
    if protocol == "fashioniq" and "" not in per_split:
        return average_fashioniq({cat: res for cat, res in per_split.items() if res})
    return per_split[""]
