"""Composed image retrieval (reference image + modifier text -> target image), the CIRR,
FashionIQ and Shoes protocols as CLIP4Cir and MLCL compute them: one protocol resolver, the
FashionIQ category rule, the metrics of one gallery, the CIRR test-server files, and
:func:`evaluate_composed_method`, the one composed evaluation (the trainer, ``featvlr eval`` on
runs and on composed embeddings all use it).

One split is one gallery. CIRR removes the reference and ranks the target among the other
members of its image set for Rsubset@K; Shoes removes the reference (as MLCL does);
FashionIQ keeps it, each category being its own split (``val`` stands for ``val_dress``,
``val_shirt``, ``val_toptee`` whenever those exist).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.cache.store import FeatureStore, StoreSplit
from featvlr.core.errors import FeatvlrError, InputError
from featvlr.core.fileio import atomic_write_text
from featvlr.evaluation.embed import embed_composed_split
from featvlr.evaluation.options import COMPOSED_PROTOCOLS, parse_scenarios
from featvlr.retrieval import (
    DEFAULT_CHUNK_ELEMENTS,
    EmbeddingScores,
    as_index,
    as_tensor,
    iter_blocks,
    ranks,
    ranks_within,
    topk,
)
from featvlr.retrieval.metrics import composed_summary, recall_curve

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def resolve_composed_protocol(protocol: str = "auto", *, dataset: str | None = None,
                              composed: Mapping[str, Any] | None = None) -> str:
    """The composed protocol: ``"cirr"``, ``"fashioniq"`` or ``"shoes"``.

    An explicit ``protocol`` wins; ``"auto"`` resolves from the ``dataset`` name when one is
    given (FashionIQ, Shoes; CIRR, the CIRR-layout demo and any other name are ``"cirr"``),
    else from a split's ``composed`` arrays (image sets: CIRR; categories: FashionIQ; else
    Shoes). Without either it stays ``"auto"``.
    """
    if protocol != "auto":
        if protocol not in COMPOSED_PROTOCOLS:
            raise FeatvlrError(f"unknown composed protocol {protocol!r} ({', '.join(COMPOSED_PROTOCOLS)})")
        return protocol
    if dataset:
        name = dataset.lower().replace("-", "").replace("_", "")
        if name.startswith("fashioniq") or name == "fiq":
            return "fashioniq"
        if name.startswith("shoes"):
            return "shoes"
        return "cirr"
    if composed is not None:
        if "subsets" in composed:
            return "cirr"
        if "category" in composed:
            return "fashioniq"
        return "shoes"
    return "auto"


def composed_galleries(store: FeatureStore, name: str, protocol: str = "auto") -> dict[str, str]:
    """Category -> split name of the galleries that evaluating split ``name`` means.

    FashionIQ (and ``"auto"``): the per-category splits ``<name>_<category>`` whenever the
    cache has them (each category is its own gallery), else ``{"": name}``. Every other
    protocol: ``{"": name}``.
    """
    if protocol in ("fashioniq", "auto"):
        splits = store.splits()
        per_cat = {s[len(name) + 1:]: s for s in splits if s.startswith(name + "_") and store.has(f"composed/{s}")}
        if per_cat:
            return dict(sorted(per_cat.items()))
        if protocol == "fashioniq" and not store.has(f"composed/{name}"):
            raise InputError(store.path, f"no FashionIQ split {name!r} nor per-category splits {name}_<category> "
                             f"(the cache has: {', '.join(splits) or 'none'})")
    return {"": name}


def _cirr_means(res: dict[str, float]) -> dict[str, float]:
    seven = [res[k] for k in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3")]
    positive = min(seven) > 0
    return {
        "recall_avg": (res["R@5"] + res["Rsubset@1"]) / 2,
        "arithmetic_mean": float(np.mean(seven)),
        "harmonic_mean": float(len(seven) / sum(1.0 / v for v in seven)) if positive else 0.0,
        "geometric_mean": float(math.exp(np.mean([math.log(v) for v in seven]))) if positive else 0.0,
    }


def evaluate_composed(query_emb: Any, gallery_emb: Any, composed: Mapping[str, Any], *, protocol: str = "auto",
                      chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                      curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Composed image retrieval metrics of one split (one gallery), by the split's protocol.

    Args:
        query_emb: ``[n_queries, d]`` composed (reference + modifier) query embeddings.
        gallery_emb: ``[n_images, d]`` embeddings of the split's images (the gallery).
        composed: the split's ``composed()`` arrays: ``target`` and ``reference`` (image rows;
            target ``-1`` = unknown, skipped), ``subsets`` ``[n_queries, 6]`` (CIRR image
            sets, ``-1`` pads), ``category`` (FashionIQ).
        protocol: ``"cirr"`` (reference removed; Rsubset@K), ``"shoes"`` (reference
            removed), ``"fashioniq"`` (reference kept) or ``"auto"`` (from the arrays).

    Returns (percent, keys prefixed ``composed/``):
        CIRR: ``R@1/5/10/50``, ``Rsubset@1/2/3``, ``recall_avg`` = (R@5 + Rsubset@1) / 2 and
        the ``arithmetic_mean``/``harmonic_mean``/``geometric_mean`` of the 7 recalls. Shoes:
        ``R@1/10/50`` and ``recall_mean``. FashionIQ: ``R@10``, ``R@50`` and
        ``average_recall`` = (R@10 + R@50) / 2, with ``<category>_R@10``/``_R@50`` when the
        split has categories (FashionIQ's per-category galleries are separate splits; average
        them with :func:`average_fashioniq`). Empty when no query has a target (CIRR test:
        see :func:`cirr_submission`).
    """
    protocol = resolve_composed_protocol(protocol, composed=composed)
    q = as_tensor(query_emb)
    g = as_tensor(gallery_emb, device=q.device)
    target = composed.get("target")
    if target is None or len(target) != q.shape[0]:
        raise FeatvlrError(f"the composed split has {0 if target is None else len(target)} targets for "
                           f"{q.shape[0]} query embeddings")
    target = as_index(target).cpu()
    rows = torch.nonzero(target >= 0).flatten()
    if len(rows) == 0:
        return {}
    src = EmbeddingScores(q[rows.to(q.device)], g)
    tgt = target[rows]
    ref = None
    if protocol in ("cirr", "shoes") and composed.get("reference") is not None:
        ref = as_index(composed["reference"]).cpu()[rows]
    main = ranks(src, tgt, exclude=ref, chunk_elements=chunk_elements)
    if curves is not None:
        curves["composed"] = recall_curve(main)
    if protocol == "cirr":
        sub = None
        if composed.get("subsets") is not None:
            sub = ranks_within(src, tgt, as_index(composed["subsets"]).cpu()[rows], exclude=ref,
                               chunk_elements=chunk_elements)
        res = composed_summary(main, (1, 5, 10, 50), sub, (1, 2, 3))
        if sub is not None:
            res.update(_cirr_means(res))
    elif protocol == "shoes":
        res = composed_summary(main, (1, 10, 50))
        res["recall_mean"] = (res["R@1"] + res["R@10"] + res["R@50"]) / 3
    else:
        res = composed_summary(main, (10, 50))
        res["average_recall"] = (res["R@10"] + res["R@50"]) / 2
        if composed.get("category") is not None:
            cats = np.asarray(composed["category"]).astype(str)[rows.numpy()]
            r = main.numpy()
            for cat in sorted(set(cats.tolist())):
                sel = r[cats == cat]
                res[f"{cat}_R@10"] = 100.0 * int(np.count_nonzero(sel < 10)) / len(sel)
                res[f"{cat}_R@50"] = 100.0 * int(np.count_nonzero(sel < 50)) / len(sel)
    res["n_queries"] = float(len(rows))
    return {f"composed/{k}": float(v) for k, v in res.items()}


def average_fashioniq(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """FashionIQ summary over per-category results (each from :func:`evaluate_composed` on the
    category's own split): ``composed/<cat>_R@10``, ``composed/<cat>_R@50``, their means
    ``composed/R@10``, ``composed/R@50`` and ``composed/average_recall``."""
    out: dict[str, float] = {}
    for cat, res in per_category.items():
        out[f"composed/{cat}_R@10"] = res["composed/R@10"]
        out[f"composed/{cat}_R@50"] = res["composed/R@50"]
    r10 = [res["composed/R@10"] for res in per_category.values()]
    r50 = [res["composed/R@50"] for res in per_category.values()]
    if r10:
        out["composed/R@10"], out["composed/R@50"] = float(np.mean(r10)), float(np.mean(r50))
        out["composed/average_recall"] = (out["composed/R@10"] + out["composed/R@50"]) / 2
    return out


def cirr_submission(query_emb: Any, gallery_emb: Any, composed: Mapping[str, Any], image_names: Sequence[str], *,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two CIRR test-server files: top-50 names with the reference removed, and the top-3
    names among the image set's members other than the reference; pair ids as strings."""
    q = as_tensor(query_emb)
    g = as_tensor(gallery_emb, device=q.device)
    names = np.asarray(list(image_names), dtype=object)
    if len(names) != g.shape[0]:
        raise FeatvlrError(f"{len(names)} image names for {g.shape[0]} gallery embeddings")
    for key in ("reference", "subsets", "pair_ids"):
        if key not in composed:
            raise FeatvlrError(f"a CIRR submission needs composed/{key}")
    reference = as_index(composed["reference"])
    members = as_index(composed["subsets"])
    pair_ids = [str(p.decode() if isinstance(p, bytes) else p) for p in np.asarray(composed["pair_ids"]).tolist()]
    if not (len(reference) == len(members) == len(pair_ids) == q.shape[0]):
        raise FeatvlrError("composed reference/subsets/pair_ids and the query embeddings disagree in length")
    src = EmbeddingScores(q, g)
    # k below the gallery size: with 50 or fewer images the excluded reference would fill the last slot
    _, top = topk(src, min(50, g.shape[0] - 1), exclude=reference, chunk_elements=chunk_elements)
    # subset: members other than the reference (and -1 pads) drop to -inf, then top-3
    sub_idx = []
    mem = members.to(q.device)
    ref = reference.to(q.device)
    for start, stop, block in iter_blocks(src, chunk_elements):
        m = mem[start:stop]
        s = block.gather(1, m.clamp(min=0)).masked_fill((m < 0) | (m == ref[start:stop, None]), float("-inf"))
        n_valid = int(((m >= 0) & (m != ref[start:stop, None])).sum(1).min())
        order = torch.topk(s, min(3, n_valid, s.shape[1]), dim=1).indices
        sub_idx.append(m.gather(1, order).cpu())
    sub = torch.cat(sub_idx)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for i, pid in enumerate(pair_ids):
        row = top[i].numpy()
        recall[pid] = names[row[(row >= 0) & (row != int(reference[i]))]].tolist()
        subset[pid] = names[sub[i].numpy()].tolist()
    return recall, subset


def write_cirr_submission(out_dir: str | Path, recall: dict[str, Any], subset: dict[str, Any],
                          name: str = "featvlr") -> tuple[Path, Path]:
    """Write ``recall_submission_<name>.json`` and ``recall_subset_submission_<name>.json``."""
    out_dir = Path(out_dir)
    paths = (out_dir / f"recall_submission_{name}.json", out_dir / f"recall_subset_submission_{name}.json")
    for path, obj in zip(paths, (recall, subset)):
        atomic_write_text(path, json.dumps(obj))
    return paths


CIRR_SERVER = "https://cirr.cecs.anu.edu.au/test_process/"


def subset_submission_path(recall_path: str | Path) -> Path:
    """``recall_subset_submission_<name>.json`` beside ``recall_submission_<name>.json``."""
    path = Path(recall_path)
    if not path.name.startswith("recall_submission_"):
        raise InputError(path, "expected a recall_submission_<split>.json file (the one featvlr eval writes)")
    return path.with_name("recall_subset_" + path.name[len("recall_"):])


def score_cirr_submission(recall_path: str | Path, truth_path: str | Path) -> dict[str, float]:
    """Score the two CIRR test-server files against a truth file (a JSON list of ``{"pairid",
    "target"}`` records, as the demo's ``truth/cirr_<split>_edits.json``), as the server does:
    ``composed/R@1/5/10/50`` from the top-50 list, ``composed/Rsubset@1/2/3`` from the subset
    list, and their means."""
    recall_path, truth_path = Path(recall_path), Path(truth_path)
    subset_path = subset_submission_path(recall_path)
    files = {}
    for path in (recall_path, subset_path, truth_path):
        if not path.is_file():
            raise InputError(path, "no such file")
        try:
            files[path] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not valid JSON ({exc})") from None
    recall, subset, truth = files[recall_path], files[subset_path], files[truth_path]
    if not (isinstance(truth, list) and all(isinstance(t, dict) and "pairid" in t and "target" in t for t in truth)):
        raise InputError(truth_path, "expected a JSON list of {\"pairid\", \"target\"} records")
    if not truth:
        raise InputError(truth_path, "holds no pairs")
    res: dict[str, float] = {}
    for name, listed, ks in ((recall_path, recall, (1, 5, 10, 50)), (subset_path, subset, (1, 2, 3))):
        missing = [str(t["pairid"]) for t in truth if str(t["pairid"]) not in listed]
        if missing:
            raise InputError(name, f"has no ranking for {len(missing)} of the {len(truth)} pairs of {truth_path.name} "
                                   f"(first: pair {missing[0]})")
        for k in ks:
            hits = [t["target"] in listed[str(t["pairid"])][:k] for t in truth]
            res[("R@" if listed is recall else "Rsubset@") + str(k)] = 100.0 * float(np.mean(hits))
    res.update(_cirr_means(res))
    return {f"composed/{k}": v for k, v in res.items()}


def evaluate_composed_split(query_emb: Any, gallery_emb: Any, split: StoreSplit, *, protocol: str = "auto",
                            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, curves: dict[str, list[float]] | None = None,
                            submission_dir: str | Path | None = None,
                            submission_files: list[str] | None = None) -> dict[str, float]:
    """:func:`evaluate_composed` of embeddings on a store split (one gallery); on a CIRR split
    without targets (test1) the two test-server files go to ``submission_dir`` when it is
    given, and their paths to ``submission_files``."""
    comp = split.composed()
    if not comp:
        raise InputError(split.store.path, f"split {split.name!r} has no composed data")
    res = evaluate_composed(query_emb, gallery_emb, comp, protocol=protocol, chunk_elements=chunk_elements,
                            curves=curves)
    if not res and submission_dir is not None and "subsets" in comp:
        recall, subset = cirr_submission(query_emb, gallery_emb, comp, split.image_ids(), chunk_elements=chunk_elements)
        paths = write_cirr_submission(submission_dir, recall, subset, name=split.name)
        if submission_files is not None:
            submission_files.extend(str(p) for p in paths)
    return res


def evaluate_composed_method(method: Any, split: StoreSplit | str, *, dataset: str = "", protocol: str = "auto",
                             scenarios: str | Sequence[str] | None = None, batch_size: int = 512,
                             device: torch.device | str = "cpu", store: FeatureStore | None = None,
                             chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, submission_dir: str | Path | None = None,
                             curves: dict[str, list[float]] | None = None,
                             submission_files: list[str] | None = None) -> dict[str, float]:
    """Composed-retrieval metrics of ``method`` on ``split`` with its dataset's protocol.

    Args:
        method: a composed method (``encode_queries``, ``encode_images``); put in eval mode
            for the call.
        split: a :class:`~featvlr.cache.store.StoreSplit`, or a split name together with ``store``.
            It may stand for FashionIQ's per-category splits (:func:`composed_galleries`:
            ``val`` for ``val_dress``, ``val_shirt``, ``val_toptee``; each its own gallery).
        dataset, protocol: :func:`resolve_composed_protocol` (``cirr`` also for the demo).
        scenarios: None, ``"all"`` or ``["composed"]``; any other scenario is refused.
        batch_size, device: embedding batches.
        chunk_elements: most query x gallery scores held at once while ranking.
        submission_dir: on a CIRR split without targets (test1), write the two test-server
            files there (:func:`cirr_submission`); their paths go to ``submission_files``.
        curves: filled with the R@1..50 curve (``composed``; FashionIQ ``composed_<category>``).

    Returns:
        The keys of :func:`evaluate_composed` (percent, prefixed ``composed/``): CIRR
        ``R@1/5/10/50``, ``Rsubset@1/2/3``, ``recall_avg``, ``arithmetic_mean``,
        ``harmonic_mean``, ``geometric_mean``; Shoes ``R@1/10/50``, ``recall_mean``;
        FashionIQ ``<category>_R@10``, ``<category>_R@50``, their means ``R@10``, ``R@50``
        and ``average_recall`` (:func:`average_fashioniq`). Empty for a split without targets.
    """
    chosen = parse_scenarios(scenarios)
    if chosen is not None and chosen != ["composed"]:
        raise FeatvlrError(f"a composed method has only the composed scenario, not {', '.join(chosen)}")
    if isinstance(split, str):
        if store is None:
            raise ValueError("pass store= with a split name")
        name = split
    else:
        store, name = split.store, split.name
    protocol = resolve_composed_protocol(protocol, dataset=dataset)
    galleries = composed_galleries(store, name, protocol)
    if "" not in galleries and protocol == "auto":
        protocol = "fashioniq"
    per_split: dict[str, dict[str, float]] = {}
    for cat, split_name in galleries.items():
        sp = split if isinstance(split, StoreSplit) and split_name == split.name else StoreSplit(store, split_name)
        if not sp.composed():
            raise InputError(store.path, f"split {split_name!r} has no composed data")
        q_emb, g_emb = embed_composed_split(method, sp, batch_size=batch_size, device=device)
        part: dict[str, list[float]] = {}
        per_split[cat] = evaluate_composed_split(q_emb, g_emb, sp, protocol=protocol, chunk_elements=chunk_elements,
                                                 curves=part, submission_dir=submission_dir,
                                                 submission_files=submission_files)
        if curves is not None:
            curves.update({(f"{k}_{cat}" if cat else k): v for k, v in part.items()})
    if "" not in per_split:
        return average_fashioniq({cat: res for cat, res in per_split.items() if res})
    return per_split[""]
