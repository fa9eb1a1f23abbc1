"""Composed-retrieval evaluation over a composed split of the feature cache.

:func:`embed_composed_split` embeds the queries (``method.encode_queries``) and the gallery
(``method.encode_images``); :func:`evaluate_composed_method` ranks them exactly by chunks
with each dataset's protocol (``METHODS.md`` 2.4, metrics from
:func:`featvlr.scenarios.evaluate_composed`), FashionIQ's per-category galleries included.
Batches and query arrays live in :mod:`featvlr.data.composed`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featvlr.data import iter_image_batches
from featvlr.data.composed import ComposedBatches, ComposedQueries, iter_query_batches, read_queries  # noqa: F401
from featvlr.errors import InputError
from featvlr.retrieval import DEFAULT_CHUNK_ELEMENTS
from featvlr.store import FeatureStore, StoreSplit


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
