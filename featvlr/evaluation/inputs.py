"""Inputs of ``featvlr eval`` from files: embeddings (``.npz``), a similarity matrix (``.npy``),
a relevance file (:func:`featvlr.retrieval.relevance.load_relevance`), a cache split, the eval folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.errors import InputError
from featvlr.core.fileio import map_npy


def eval_dir(target: Path) -> Path:
    """``runs/<run>/eval`` for a run folder or a checkpoint inside ``runs/<run>/ckpt/``."""
    if target.is_dir():
        return target / "eval"
    if target.parent.name == "ckpt":
        return target.parent.parent / "eval"
    return target.parent / "eval"


def open_split(cache: str | Path, split: str):
    """Split ``split`` of the feature cache at ``cache``."""
    from featvlr.cache.store import FeatureStore

    return FeatureStore(cache).split(split)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an embeddings file: ``images`` and ``texts``, or ``queries`` and ``gallery``."""
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise InputError(path, f"not a readable .npz file: {exc}") from None
    if not ({"images", "texts"} <= set(arrays) or {"queries", "gallery"} <= set(arrays)):
        raise InputError(path, f"expected arrays 'images' and 'texts' (or 'queries' and 'gallery'); "
                               f"found {', '.join(sorted(arrays)) or 'none'}")
    return arrays


def load_sims(path: Path) -> np.ndarray:
    """A ``[n_images, n_texts]`` similarity matrix ``.npy`` (memory-mapped)."""
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "a folder, not a numpy array file (.npy)")
    sims = map_npy(path, "matrix")
    if sims.ndim != 2:
        raise InputError(path, f"expected a 2-D [n_images, n_texts] matrix, got shape {sims.shape}")
    return sims


def check_embeddings(arrays: dict[str, np.ndarray], path: Path, st: Any, dev: str):
    """``images`` and ``texts`` as tensors on ``dev``, checked against each other and the split."""
    import torch

    img, txt = arrays["images"], arrays["texts"]
    if img.ndim != 2 or txt.ndim != 2:
        raise InputError(path, f"'images' and 'texts' must be 2-D, got {img.shape} and {txt.shape}")
    if img.shape[1] != txt.shape[1]:
        raise InputError(path, f"'images' has width {img.shape[1]} but 'texts' has {txt.shape[1]}")
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        raise InputError(path, "the embeddings contain NaN or infinite values")
    if st is not None and (img.shape[0] != st.n_images or txt.shape[0] != st.n_texts):
        raise InputError(path, f"{img.shape[0]} images and {txt.shape[0]} texts, but split {st.name!r} of the "
                               f"cache has {st.n_images} and {st.n_texts}")
    return torch.as_tensor(img, device=dev), torch.as_tensor(txt, device=dev)


def check_composed_embeddings(arrays: dict[str, np.ndarray], path: Path, st: Any) -> tuple[np.ndarray, np.ndarray]:
    """``queries`` and ``gallery``, checked against the composed split ``st``."""
    comp = st.composed()
    if not comp:
        raise InputError(st.store.path, f"split {st.name!r} has no composed data")
    q, g = arrays["queries"], arrays["gallery"]
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise InputError(path, f"'queries' and 'gallery' must be [n, d] with the same d, got {q.shape} and {g.shape}")
    if q.shape[0] != len(comp["target"]) or g.shape[0] != st.n_images:
        raise InputError(path, f"{q.shape[0]} queries and {g.shape[0]} gallery rows, but split {st.name!r} has "
                               f"{len(comp['target'])} queries and {st.n_images} images")
    if not (np.isfinite(q).all() and np.isfinite(g).all()):
        raise InputError(path, "the embeddings contain NaN or infinite values")
    return q, g


def arrays_or_split(st: Any, relevance: Any, n_images: int, n_texts: int, inputs: dict) -> Any:
    """The split, or with relevance files ``{"txt2img", "relevance", "relevance_kinds"}`` (the
    split's index and its other relevance kinds when there is a split). ``relevance``: a file
    (ROUGE-L) or a list of ``FILE`` / ``KIND=FILE`` (:func:`featvlr.retrieval.relevance.parse_relevance_specs`),
    read by :func:`featvlr.retrieval.relevance.load_relevance`."""
    from featvlr.retrieval.relevance import load_relevance, parse_relevance_specs

    files = parse_relevance_specs(relevance)
    if not files:
        return st
    kinds: dict[str, Any] = {}
    if st is not None:
        kinds = {k: st.relevance(k) for k in st.relevance_kinds() if k not in files}
    for kind, rpath in files.items():
        kinds[kind] = load_relevance(rpath, n_texts, n_images)
        inputs["relevance" if kind == "rougeL" else f"relevance_{kind}"] = str(rpath)
    txt2img = st.image_index() if st is not None else None
    return {"txt2img": txt2img, "relevance": kinds.pop("rougeL", None), "relevance_kinds": kinds}


def has_relevance(data: Any) -> bool:
    """Whether a split, or an ``arrays_or_split`` mapping, carries a relevance matrix."""
    if data is None:
        return False
    if isinstance(data, dict):
        return data.get("relevance") is not None or bool(data.get("relevance_kinds"))
    return bool(data.relevance_kinds())


def source_truth_folder(cache: str | Path | None) -> Path | None:
    """The ``truth/`` folder beside the source the cache was extracted from (the demo writes
    its scene graphs and edits there), read from the cache's ``sources`` provenance; None for a
    cache without provenance or a source without such a folder."""
    import json

    if not cache or not Path(cache).is_file():
        return None
    try:
        from featvlr.cache.store import FeatureStore

        sources = FeatureStore(cache).attrs.get("sources")
        sources = json.loads(sources) if isinstance(sources, str) else sources
        root = sources.get("root") if isinstance(sources, dict) else None
    except Exception:  # a cache without provenance
        return None
    truth = Path(root).parent / "truth" if root else None
    return truth if truth is not None and truth.is_dir() else None

