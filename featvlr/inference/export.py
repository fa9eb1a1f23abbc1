"""A run's embeddings of a cache split in an ``.npz`` file: the file ``featvlr eval
--embeddings`` reads, with the ids and texts a reader needs to use it elsewhere.

Cross-modal methods: ``images [N, d]``, ``texts [T, d]`` (float32, L2-normalised; a GLS
run's global embeddings), ``image_ids [N]``, ``captions [T]``, ``txt2img [T]`` (caption ->
image row). Composed methods: ``queries [Q, d]``, ``gallery [N, d]``, ``image_ids [N]``,
``reference [Q]``, ``target [Q]`` (rows; -1 unknown) and ``modifiers [Q]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.errors import FeatvlrError
from featvlr.core.fileio import atomic_path


def embedding_arrays(model: Any, split: str = "test") -> dict[str, np.ndarray]:
    """The arrays of the embeddings file of ``split`` (see the module docstring)."""
    from featvlr.data.composed import read_queries
    from featvlr.evaluation.embed import embed_composed_split
    from featvlr.inference.search import global_embeddings

    sp = model.split(split)
    ids = np.array(sp.image_ids(), dtype=str)
    raw = sp.raw_captions() if sp.has(f"texts/{sp.name}/raw") else [""] * sp.n_texts
    if model.task == "composed":
        q = read_queries(sp)
        queries, gallery = embed_composed_split(model.method, sp, device=model.device, queries=q)
        return {"queries": queries.cpu().numpy(), "gallery": gallery.cpu().numpy(), "image_ids": ids,
                "reference": q.reference, "target": q.target,
                "modifiers": np.array([raw[t] for t in q.text[:, 0]], dtype=str)}
    idx = model.index(sp.name)
    emb = global_embeddings(model.method, idx.images, idx.texts)
    if emb is None:
        raise FeatvlrError(f"method {model.method.name!r} (this eval_mode) scores pairs only: it has no embeddings "
                           "to write")
    return {"images": emb[0].float().cpu().numpy(), "texts": emb[1].float().cpu().numpy(), "image_ids": ids,
            "captions": np.array(raw, dtype=str), "txt2img": sp.image_index()}


def write_embeddings(model: Any, out: str | Path, split: str = "test") -> dict[str, tuple[int, ...]]:
    """Write :func:`embedding_arrays` to ``out`` (atomically); returns the arrays' shapes."""
    arrays = embedding_arrays(model, split)
    out = Path(out)
    if out.suffix != ".npz":
        raise FeatvlrError(f"{out}: the embeddings file must end in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {k: tuple(v.shape) for k, v in arrays.items()}
