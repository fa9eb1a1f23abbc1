"""Ranked lists of a run's gallery for given queries (:func:`rank_queries`) and the JSON
record of one search (:func:`search_record`, what ``featvlr search --json`` prints).

Record (keys stable; ``rank`` is 1-based, ``row`` 0-based in the split)::

    {"run": ..., "checkpoint": ..., "method": "vse", "cache": ..., "split": "test",
     "k": 10, "backend": "exact",
     "query": {"type": "text", "text": "..."}
            | {"type": "image", "image_id": "...", "row": 3}
            | {"type": "composed", "reference_id": "...", "reference_row": 3, "modifier": "..."},
     "results": {"t2i": [image hit, ...]}                  (text query)
              | {"i2t": [text hit, ...], "i2i": [image hit, ...]}   (image query)
              | {"composed": [image hit, ...]}}            (composed query)

    image hit: {"rank": 1, "row": 12, "image_id": "...", "score": 0.53, "captions": [...]}
    text hit:  {"rank": 1, "row": 60, "text": "...", "image_id": "...", "image_row": 12, "score": 0.49}

``i2i`` is left out for a method with a pairwise score only (GLS-L). Scores are the
method's: cosine similarities for embedding methods, the re-rank score inside a GLS
shortlist.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.inference.search import (
    SEARCH_BACKENDS,
    cross_source,
    embedding_top_items,
    global_embeddings,
    top_items,
)

SCENARIOS = ("t2i", "i2t", "i2i", "composed")


def _take(out: Any, rows: torch.Tensor) -> Any:
    if isinstance(out, dict):
        return {k: v.index_select(0, rows.to(v.device)) for k, v in out.items()}
    return out.index_select(0, rows.to(out.device))


def composed_exclusion(model: Any, split: Any) -> bool:
    """Whether the run's composed protocol removes the reference from the gallery of ``split``
    (CIRR, Shoes; FashionIQ keeps it), resolved as the composed evaluation resolves it."""
    from featvlr.evaluation.composed import resolve_composed_protocol
    from featvlr.evaluation.options import EvalOptions

    opts = EvalOptions.from_config(model.config)
    protocol = resolve_composed_protocol(opts.composed_protocol, dataset=opts.dataset or None)
    if protocol == "auto":
        protocol = resolve_composed_protocol("auto", composed=split.composed())
    return protocol in ("cirr", "shoes")


def rank_queries(model: Any, scenario: str, *, split: str = "test", k: int = 10, queries: Any = None,
                 rows: Any = None, exclude: Any = None, backend: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` ``(scores [Q, k], rows [Q, k])`` of the gallery of ``split`` for a scenario.

    Args:
        model: a :class:`~featvlr.inference.model.RetrievalModel`.
        scenario: ``t2i`` (queries: text outputs, or text ``rows`` of the split), ``i2t`` and
            ``i2i`` (image ``rows``; i2i leaves each query image out), ``composed`` (query
            embeddings; ``exclude``: each query's reference row, -1 for none).
        backend: ``exact`` or ``faiss-flat``/``faiss-ivf``/``faiss-hnsw`` (embeddings only).
    """
    if scenario not in SCENARIOS:
        raise FeatvlrError(f"unknown search scenario {scenario!r} ({', '.join(SCENARIOS)})")
    idx = model.index(split)
    method = model.method
    if rows is not None:
        rows = torch.as_tensor(np.atleast_1d(np.asarray(rows, dtype=np.int64)))
    if scenario == "composed":
        if backend != "exact":
            return idx.faiss("images", idx.images, backend.split("-", 1)[1]).search(queries, k, exclude=exclude)
        return embedding_top_items(queries, idx.images, k, exclude=exclude,
                                   gallery_finite=idx.finite("images", idx.images))
    if scenario == "t2i":
        q_txt = queries if queries is not None else _take(idx.texts, rows)
        q_img, gallery_side = None, "images"
    else:
        if rows is None:
            raise FeatvlrError(f"{scenario} queries are image rows of the split")
        q_img = _take(idx.images, rows)
        gallery_side = "texts" if scenario == "i2t" else "images"
    plan = method.shortlist_plan(idx.images, idx.texts)
    shortlisted = plan is not None and plan.get("shortlist") is not None
    emb = global_embeddings(method, idx.images, idx.texts)
    if scenario == "i2i" or backend != "exact" or (emb is not None and not shortlisted):
        # dot products of global embeddings: the evaluation's EmbeddingScores, the gallery checked once
        if emb is None:
            raise FeatvlrError(f"method {method.name!r} scores pairs only: {scenario if scenario == 'i2i' else 'FAISS'}"
                               " needs global embeddings")
        if backend != "exact" and shortlisted:
            raise FeatvlrError(f"method {method.name!r} re-ranks a shortlist: search it with the exact backend")
        gallery = emb[0] if gallery_side == "images" else emb[1]
        if scenario == "t2i":
            q = global_embeddings(method, idx.images, q_txt)[1]
        else:
            q = emb[0].index_select(0, rows.to(emb[0].device))
        exc = rows if scenario == "i2i" else None
        if backend != "exact":
            return idx.faiss(gallery_side, gallery, backend.split("-", 1)[1]).search(q, k, exclude=exc)
        return embedding_top_items(q, gallery, k, exclude=exc, gallery_finite=idx.finite(gallery_side, gallery))
    if scenario == "t2i":
        return top_items(cross_source(method, idx.images, q_txt, "texts"), k)
    return top_items(cross_source(method, q_img, idx.texts, "images"), k)


def _image_hits(model: Any, split: Any, scores: torch.Tensor, rows: torch.Tensor, with_captions: bool = True
                ) -> list[dict[str, Any]]:
    ids = split.image_ids()
    caps = _captions_by_image(split) if with_captions else {}
    out = []
    for s, r in zip(scores.tolist(), rows.tolist()):
        if r < 0:
            continue
        out.append({"rank": len(out) + 1, "row": int(r), "image_id": ids[r], "score": float(s),
                    "captions": caps.get(int(r), [])})
    return out


def _text_hits(split: Any, scores: torch.Tensor, rows: torch.Tensor) -> list[dict[str, Any]]:
    texts = _raw(split)
    ids = split.image_ids()
    txt2img = split.image_index()
    out = []
    for s, r in zip(scores.tolist(), rows.tolist()):
        if r < 0:
            continue
        img = int(txt2img[r])
        out.append({"rank": len(out) + 1, "row": int(r), "text": texts[r] if texts else "",
                    "image_id": ids[img] if img >= 0 else None, "image_row": img, "score": float(s)})
    return out


def _raw(split: Any) -> list[str]:
    return split.raw_captions() if split.has(f"texts/{split.name}/raw") else []


def _captions_by_image(split: Any) -> dict[int, list[str]]:
    texts = _raw(split)
    out: dict[int, list[str]] = {}
    if texts:
        for t, i in zip(texts, split.image_index().tolist()):
            if i >= 0:
                out.setdefault(int(i), []).append(t)
    return out


def search_record(model: Any, *, text: str | None = None, image: Any = None, reference: Any = None,
                  modifier: str | None = None, split: str = "test", k: int = 10,
                  backend: str = "exact") -> dict[str, Any]:
    """One search as a JSON-ready record (see the module docstring)."""
    if backend not in SEARCH_BACKENDS:
        raise FeatvlrError(f"unknown backend {backend!r} ({', '.join(SEARCH_BACKENDS)})")
    if k < 1:
        raise FeatvlrError(f"--k must be positive, got {k}")
    given = [name for name, v in (("a text", text), ("--image", image), ("--reference", reference)) if v is not None]
    if len(given) != 1:
        raise FeatvlrError("give one query: a text, --image ID, or --reference ID with --modifier TEXT")
    sp = model.split(split)
    composed = model.task == "composed"
    if composed and reference is None:
        raise FeatvlrError(f"method {model.method.name!r} is composed: search with --reference ID --modifier TEXT")
    if not composed and reference is not None:
        raise FeatvlrError(f"method {model.method.name!r} is cross-modal: --reference is for composed methods")
    record: dict[str, Any] = {"run": str(model.run_dir), "checkpoint": str(model.checkpoint),
                              "method": model.method.name, "cache": str(model.cache), "split": sp.name, "k": int(k),
                              "backend": backend}
    results: dict[str, list[dict[str, Any]]] = {}
    if reference is not None:
        if not modifier:
            raise FeatvlrError("--reference needs --modifier TEXT (what to change)")
        row = model.image_row(reference, sp.name)
        record["query"] = {"type": "composed", "reference_id": sp.image_ids()[row], "reference_row": row,
                           "modifier": modifier}
        q = model.encode_queries([row], [modifier], split=sp.name)
        exc = torch.tensor([row]) if composed_exclusion(model, sp) else None
        s, r = rank_queries(model, "composed", split=sp.name, k=k, queries=q, exclude=exc, backend=backend)
        results["composed"] = _image_hits(model, sp, s[0], r[0], with_captions=False)
    elif image is not None:
        row = model.image_row(image, sp.name)
        record["query"] = {"type": "image", "image_id": sp.image_ids()[row], "row": row}
        s, r = rank_queries(model, "i2t", split=sp.name, k=k, rows=[row], backend=backend)
        results["i2t"] = _text_hits(sp, s[0], r[0])
        if global_embeddings(model.method, *_probe(model, sp.name)) is not None:
            s, r = rank_queries(model, "i2i", split=sp.name, k=k, rows=[row], backend=backend)
            results["i2i"] = _image_hits(model, sp, s[0], r[0])
    else:
        if not str(text).strip():
            raise FeatvlrError("the query text is empty")
        record["query"] = {"type": "text", "text": text}
        q = model.encode_texts([text], split=sp.name)
        s, r = rank_queries(model, "t2i", split=sp.name, k=k, queries=q, backend=backend)
        results["t2i"] = _image_hits(model, sp, s[0], r[0])
    record["results"] = results
    return record


def _probe(model: Any, split: str) -> tuple[Any, Any]:
    idx = model.index(split)
    return idx.images, idx.texts
