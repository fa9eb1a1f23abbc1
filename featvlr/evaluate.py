"""``featvlr eval`` as a library function: score a run, embeddings or a similarity matrix.

Three inputs, one protocol:

- a run folder or checkpoint (``featvlr.checkpoint.load_method``), embedded on a cache split;
- an ``.npz`` with ``images`` ``[n_images, d]`` and ``texts`` ``[n_texts, d]`` embeddings
  (or ``queries`` and ``gallery`` for composed retrieval) from any model;
- an ``.npy`` similarity matrix ``[n_images, n_texts]`` from any model (i2t and t2i, and
  TERAN's NDCG when a relevance matrix is given).

The caption -> image index and the ROUGE-L relevance come from ``--cache``/``--split``, or
the relevance from ``--relevance`` (``.npy``, or TERAN's headerless float32 memmap). The
results JSON records the metrics, the protocol, the run config and seed, the versions, the
device and the time taken; a Recall@K plot and a per-scenario bar chart go beside it.

Example::

    record = run_eval("runs/f30k_vse", split="test", scenarios="all")
    record = run_eval(embeddings="mine.npz", cache="features/f30k.h5", split="test",
                      json_path="mine.json")
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featvlr import __version__
from featvlr.errors import FeatvlrError, InputError

NDCG_GAINS = {"ndcg_lin": "rel (linear gain, CoVLR/RVLR)", "ndcg_exp": "2^rel - 1 (exponential gain, TERAN)"}


def parse_ints(text: str | Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    """``"1,5"`` -> ``(1, 5)``."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(x) for x in text)
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FeatvlrError(f"--{what} expects comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise FeatvlrError(f"--{what} expects positive integers, got {text!r}")
    return values


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatvlrError(f"device {device!r} requested but CUDA is not available")
    return device


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _load_npy(path: Path, *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An ``.npy`` file (memory-mapped), or a headerless float32 matrix of ``shape`` (TERAN)."""
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if shape is None:
            raise InputError(path, f"not a readable .npy array: {exc}") from None
    expected = shape[0] * shape[1] * 4
    if path.stat().st_size != expected:
        raise InputError(path, f"neither a .npy file nor a raw float32 [{shape[0]}, {shape[1]}] matrix "
                               f"({path.stat().st_size} bytes, expected {expected})")
    return np.memmap(path, dtype=np.float32, mode="r", shape=shape)


def _open_split(cache: str | Path, split: str, config: Any = None):
    from featvlr.store import FeatureStore

    store = FeatureStore(cache)
    names = store.splits()
    if split not in names and config is not None:
        alias = getattr(getattr(config, "data", None), f"{split}_split", None)
        if alias in names:
            split = alias
    return store.split(split)


def _eval_dir(target: Path) -> Path:
    """``runs/<run>/eval`` for a run folder or a checkpoint inside ``runs/<run>/ckpt/``."""
    if target.is_dir():
        return target / "eval"
    if target.parent.name == "ckpt":
        return target.parent.parent / "eval"
    return target.parent / "eval"


def _config_dict(config: Any) -> Any:
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return config
    return str(config)


def default_folds(config: Any) -> tuple[int, ...]:
    """The test protocol's folds: COCO (or ``eval.folds > 1``) adds the 5-fold 1K average to the whole split."""
    data = getattr(config, "data", None)
    ev = getattr(config, "eval", None)
    if data is not None and str(getattr(data, "dataset", "")).lower() == "coco":
        return (1, 5)
    f = int(getattr(ev, "folds", 1) or 1)
    return (1,) if f == 1 else (1, f)


def protocol_record(*, split: str | None, metrics: dict[str, float], folds: Sequence[int] = (1,),
                    ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = (10, 20, 50), ndcg_exp_k: int = 25,
                    backend: str = "exact", t2t_without_siblings: bool = False) -> dict[str, Any]:
    """The ``protocol`` block of a results JSON."""
    from featvlr.scenarios import TIE_RULE

    return {
        "split": split,
        "scenarios": sorted({k.split("/")[0] for k in metrics if "/" in k}),
        "folds": list(folds),
        "ks": list(ks),
        "ndcg_ks": list(ndcg_ks),
        "ndcg_exp_k": ndcg_exp_k,
        "ndcg_gain": NDCG_GAINS,
        "ndcg_scale": "fraction",
        "recall_scale": "percent",
        "ties": TIE_RULE,
        "backend": backend,
        "self_in_gallery": "removed (i2i, t2t, i2it, t2it)",
        "t2t_siblings": "kept" + (" (t2t_nosiblings: removed)" if t2t_without_siblings else ""),
        "coco_1k": "mean over folds of n_images / folds images" if any(f > 1 for f in folds) else None,
    }


def run_eval(target: str | Path | None = None, *, split: str = "test", scenarios: str | Sequence[str] | None = "all",
             json_path: str | Path | None = None, embeddings: str | Path | None = None,
             sims: str | Path | None = None, cache: str | Path | None = None, relevance: str | Path | None = None,
             folds: str | Sequence[int] | None = None, ks: str | Sequence[int] | None = None,
             ndcg_ks: str | Sequence[int] | None = None, ndcg_exp_k: int | None = None, device: str = "auto",
             batch_size: int | None = None, chunk_elements: int | None = None, backend: str = "exact",
             faiss_k: int = 100, t2t_without_siblings: bool = False, composed_protocol: str = "auto",
             plots: bool = True, print_table: bool = True) -> dict[str, Any]:
    """Evaluate one input (see the module docstring); write the results JSON and plots.

    Args:
        target: a run folder or a checkpoint file (or None with ``embeddings``/``sims``).
        split: the cache split (for a run, ``test`` also finds the config's ``data.test_split``).
        scenarios: ``"all"`` (every scenario the input allows) or names, e.g. ``"i2t,t2i"``.
        json_path: the results JSON (default ``<run>/eval/<split>.json``, or
            ``<input>.eval.<split>.json`` beside an embeddings/sims file).
        embeddings: ``.npz`` with ``images`` and ``texts`` (or ``queries`` and ``gallery``).
        sims: ``.npy`` ``[n_images, n_texts]`` scores.
        cache: the feature cache (caption -> image index, relevance, composed data).
        relevance: ``[n_texts, n_images]`` ROUGE-L relevance file (overrides the cache's).
        folds: e.g. ``"1,5"`` (COCO 5K and 1K); default from the run's config, else 1.
        ks, ndcg_ks, ndcg_exp_k: Recall@K and NDCG cut-offs.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        batch_size, chunk_elements: embedding batch size; most scores held at once.
        backend: ``exact`` or ``faiss-flat``/``faiss-ivf``/``faiss-hnsw`` (embeddings only).
        faiss_k: top-k list length of the FAISS backend.
        t2t_without_siblings: also report t2t with the query's sibling captions removed.
        composed_protocol: ``auto``, ``cirr``, ``fashioniq`` or ``shoes``.
        plots, print_table: write the PNGs; print the table.

    Returns:
        The results record (the JSON's content, plus ``"json"``: its path).
    """
    from featvlr.retrieval import DEFAULT_CHUNK_ELEMENTS
    from featvlr.scenarios import evaluate_cross_modal, parse_scenarios

    t0 = time.perf_counter()
    given = [x for x in (target, embeddings, sims) if x is not None]
    if len(given) != 1:
        raise FeatvlrError("give exactly one input: a run folder or checkpoint, --embeddings FILE or --sims FILE")
    if backend not in ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"):
        raise FeatvlrError(f"unknown backend {backend!r} (exact, faiss-flat, faiss-ivf, faiss-hnsw)")
    chosen = parse_scenarios(scenarios)
    dev = resolve_device(device)
    config = None
    seed = None
    curves: dict[str, list[float]] = {}
    ks_t = parse_ints(ks, "ks") or (1, 5, 10)
    ndcg_ks_t = parse_ints(ndcg_ks, "ndcg-ks")
    folds_t = parse_ints(folds, "folds")
    extra: dict[str, Any] = {}
    inputs: dict[str, Any] = {}

    if target is not None:
        tpath = Path(target)
        if not tpath.exists():
            raise InputError(tpath, "no such run folder or checkpoint")
        from featvlr.checkpoint import load_method

        method, config = load_method(tpath, dev)
        seed = getattr(getattr(config, "train", None), "seed", None)
        ev = getattr(config, "eval", None)
        folds_t = folds_t or default_folds(config)
        ndcg_ks_t = ndcg_ks_t or tuple(getattr(ev, "ndcg_ks", (10, 20, 50)))
        ndcg_exp_k = ndcg_exp_k or int(getattr(ev, "ndcg_exp_k", 25))
        chunk_elements = chunk_elements or int(getattr(ev, "chunk_elements", DEFAULT_CHUNK_ELEMENTS))
        batch_size = batch_size or int(getattr(ev, "batch_size", 512))
        cache_path = cache or getattr(getattr(config, "data", None), "cache", None)
        if not cache_path:
            raise FeatvlrError("the run's config names no feature cache; pass --cache")
        inputs.update(kind="checkpoint", path=str(tpath), cache=str(cache_path),
                      method=getattr(method, "name", type(method).__name__))
        metrics, split_name = _method_metrics(
            method, config, cache_path, split, chosen, json_path, tpath, folds_t, curves, extra,
            batch_size=batch_size, device=dev, chunk_elements=chunk_elements, composed_protocol=composed_protocol,
            ks=ks_t, ndcg_ks=ndcg_ks_t, ndcg_exp_k=ndcg_exp_k, backend=backend, faiss_k=faiss_k,
            t2t_without_siblings=t2t_without_siblings)
        inputs["split"] = split_name
        json_default = _eval_dir(tpath) / f"{split_name}.json"
    else:
        folds_t = folds_t or (1,)
        ndcg_ks_t = ndcg_ks_t or (10, 20, 50)
        ndcg_exp_k = ndcg_exp_k or 25
        chunk_elements = chunk_elements or DEFAULT_CHUNK_ELEMENTS
        st = _open_split(cache, split) if cache is not None else None
        inputs.update(cache=None if cache is None else str(cache), split=st.name if st is not None else split)
        source = Path(embeddings if embeddings is not None else sims)
        json_default = source.with_name(f"{source.stem}.eval.{split}.json")
        if embeddings is not None:
            inputs.update(kind="embeddings", path=str(source))
            arrays = _load_npz(source)
            if "queries" in arrays:
                inputs["kind"] = "composed embeddings"
                out_dir = Path(json_path).parent if json_path else json_default.parent
                metrics = _composed_from_arrays(arrays, st, source, chosen, chunk_elements, curves, out_dir,
                                                composed_protocol, extra)
            else:
                img, txt = _check_embeddings(arrays, source, st, dev)
                data = _arrays_or_split(st, relevance, img.shape[0], txt.shape[0], inputs)
                metrics = evaluate_cross_modal(
                    img, txt, data, chosen, folds_t, ks=ks_t, ndcg_ks=ndcg_ks_t, ndcg_exp_k=ndcg_exp_k,
                    teran_ndcg=_has_relevance(data), t2t_without_siblings=t2t_without_siblings, backend=backend,
                    faiss_k=faiss_k, chunk_elements=chunk_elements, curves=curves)
        else:
            inputs.update(kind="sims", path=str(source))
            metrics = _sims_metrics(source, st, relevance, chosen, folds_t, ks_t, ndcg_exp_k, chunk_elements,
                                    curves, inputs, dev)
    out = Path(json_path) if json_path else json_default
    protocol = protocol_record(split=inputs.get("split"), metrics=metrics, folds=folds_t, ks=ks_t, ndcg_ks=ndcg_ks_t,
                               ndcg_exp_k=ndcg_exp_k, backend=backend, t2t_without_siblings=t2t_without_siblings)
    record = write_results(out, metrics, split=inputs.get("split"), cfg=config, curves=curves, device=dev,
                           seconds=time.perf_counter() - t0, checkpoint=inputs.get("path") if target else None,
                           protocol=protocol, inputs=inputs, seed=seed, extra=extra, plots=plots)
    if print_table:
        print(format_table(metrics))
        print(f"results: {out}")
    return record


def _method_metrics(method, config, cache_path, split, chosen, json_path, tpath, folds, curves, extra, *,
                    batch_size, device, chunk_elements, composed_protocol, **cross_kwargs) -> tuple[dict, str]:
    """Metrics of a loaded method on a cache split (FashionIQ: over its per-category splits)."""
    from featvlr.scenarios import average_fashioniq, evaluate_method
    from featvlr.store import FeatureStore

    store = FeatureStore(cache_path)
    composed = getattr(method, "task", "cross_modal") == "composed"
    protocol = composed_protocol
    if composed and protocol == "auto":
        dataset = str(getattr(getattr(config, "data", None), "dataset", "") or "")
        if dataset:
            from featvlr.data_composed import composed_protocol as protocol_of

            protocol = protocol_of(dataset)
    names = store.splits()
    per_cat = sorted(n for n in names if n.startswith(split + "_") and store.has(f"composed/{n}"))
    if composed and split not in names and per_cat:
        results = {}
        for name in per_cat:
            results[name[len(split) + 1:]] = evaluate_method(
                method, store.split(name), ["composed"], batch_size=batch_size, device=device,
                chunk_elements=chunk_elements, protocol="fashioniq" if protocol == "auto" else protocol)
        return average_fashioniq(results), split
    st = _open_split(cache_path, split, config)
    out_dir = (Path(json_path).parent if json_path else _eval_dir(tpath)) / "submission"
    kwargs: dict[str, Any] = {"batch_size": batch_size, "device": device, "chunk_elements": chunk_elements,
                              "curves": curves}
    if not composed:
        kwargs["max_tokens"] = int(getattr(getattr(config, "data", None), "max_tokens", 0) or 0)
    if composed:
        metrics = evaluate_method(method, st, chosen or ["composed"], submission_dir=out_dir, protocol=protocol,
                                  **kwargs)
        if not metrics and out_dir.exists():
            extra["submission"] = sorted(str(p) for p in out_dir.glob(f"*_{st.name}.json"))
        return metrics, st.name
    return evaluate_method(method, st, chosen, folds, **kwargs, **cross_kwargs), st.name


def _has_relevance(data: Any) -> bool:
    if data is None:
        return False
    if isinstance(data, dict):
        return data.get("relevance") is not None
    return data.has(f"relevance/{data.name}/rougeL")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
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


def _check_embeddings(arrays: dict[str, np.ndarray], path: Path, st: Any, dev: str):
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


def _arrays_or_split(st: Any, relevance: str | Path | None, n_images: int, n_texts: int, inputs: dict) -> Any:
    if relevance is None:
        return st
    rpath = Path(relevance)
    rel = _load_npy(rpath, shape=(n_texts, n_images))
    if rel.shape != (n_texts, n_images):
        raise InputError(rpath, f"relevance has shape {rel.shape}, expected ({n_texts}, {n_images}) "
                                "(texts x images)")
    inputs["relevance"] = str(rpath)
    txt2img = st.image_index() if st is not None else None
    return {"txt2img": txt2img, "relevance": np.asarray(rel, dtype=np.float32)}


def _sims_metrics(path: Path, st: Any, relevance: str | Path | None, chosen: list[str] | None,
                  folds: tuple[int, ...], ks: tuple[int, ...], ndcg_exp_k: int, chunk_elements: int,
                  curves: dict, inputs: dict, dev: str) -> dict[str, float]:
    """i2t/t2i (and TERAN's NDCG when there is relevance) from a similarity matrix file."""
    import torch

    from featvlr.scenarios import evaluate_cross_modal

    if chosen is not None:
        bad = [s for s in chosen if s not in ("i2t", "t2i")]
        if bad:
            raise FeatvlrError(f"scenario {bad[0]} needs embeddings; a similarity matrix gives i2t and t2i only")
    sims = _load_npy(path)
    if sims.ndim != 2:
        raise InputError(path, f"expected a 2-D [n_images, n_texts] matrix, got shape {sims.shape}")
    n_img, n_txt = sims.shape
    if st is not None and (n_img, n_txt) != (st.n_images, st.n_texts):
        raise InputError(path, f"shape {sims.shape}, but split {st.name!r} has {st.n_images} images and "
                               f"{st.n_texts} texts (expected [n_images, n_texts])")
    if not (np.issubdtype(sims.dtype, np.floating) or np.issubdtype(sims.dtype, np.integer)):
        raise InputError(path, f"scores must be numbers, got dtype {sims.dtype}")
    s = torch.as_tensor(np.asarray(sims), device=dev) if dev != "cpu" else sims
    data = _arrays_or_split(st, relevance, n_img, n_txt, inputs)
    try:
        return evaluate_cross_modal(None, None, data, chosen or ["i2t", "t2i"], folds, sims=s, ks=ks,
                                    ndcg_exp_k=ndcg_exp_k, teran_ndcg=_has_relevance(data), chunk_elements=chunk_elements,
                                    curves=curves)
    except FeatvlrError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, str(exc)) from None


def _composed_from_arrays(arrays: dict[str, np.ndarray], st: Any, path: Path, chosen: list[str] | None,
                          chunk_elements: int, curves: dict, out_dir: Path, protocol: str,
                          extra: dict) -> dict[str, float]:
    from featvlr.scenarios import cirr_submission, evaluate_composed, write_cirr_submission

    if chosen is not None and chosen != ["composed"]:
        raise FeatvlrError(f"composed embeddings give only the composed scenario, not {', '.join(chosen)}")
    if st is None:
        raise FeatvlrError("composed embeddings need --cache (targets, references, image sets)")
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
    metrics = evaluate_composed(q, g, comp, protocol=protocol, chunk_elements=chunk_elements, curves=curves)
    if "subsets" in comp and not metrics:
        recall, subset = cirr_submission(q, g, comp, st.image_ids(), chunk_elements=chunk_elements)
        extra["submission"] = [str(p) for p in write_cirr_submission(out_dir, recall, subset, name=st.name)]
    return metrics


# --------------------------------------------------------------------------------------
# output


def write_results(path: str | Path, metrics: dict[str, float], *, split: str | None, cfg: Any = None,
                  curves: dict[str, list[float]] | None = None, device: str = "cpu", seconds: float = 0.0,
                  checkpoint: str | Path | None = None, protocol: dict[str, Any] | None = None,
                  inputs: dict[str, Any] | None = None, seed: int | None = None, extra: dict[str, Any] | None = None,
                  plots: bool = True) -> dict[str, Any]:
    """Write a results JSON (atomically) and, with ``plots``, ``<stem>_recall.png`` and
    ``<stem>_scenarios.png`` beside it. Returns the record written, plus ``"json"``.

    The record holds ``metrics``, ``protocol`` (split, folds, K, gains, tie rule; from
    ``cfg`` when not given), ``input``, ``config``, ``seed``, ``versions`` (featvlr, torch,
    numpy, python), ``device``, ``time_s``, ``created`` and ``curves``.
    """
    import torch

    path = Path(path)
    if protocol is None:
        ev = getattr(cfg, "eval", None)
        folds = default_folds(cfg) if cfg is not None else (1,)
        protocol = protocol_record(split=split, metrics=metrics, folds=folds,
                                   ndcg_ks=tuple(getattr(ev, "ndcg_ks", (10, 20, 50))),
                                   ndcg_exp_k=int(getattr(ev, "ndcg_exp_k", 25)))
    if seed is None and cfg is not None:
        seed = getattr(getattr(cfg, "train", None), "seed", None)
    inputs = dict(inputs or {})
    if checkpoint is not None:
        inputs.setdefault("path", str(checkpoint))
    record: dict[str, Any] = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "protocol": protocol,
        "input": inputs,
        "config": _config_dict(cfg),
        "seed": seed,
        "versions": {"featvlr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "device": _device_name(str(device)),
        "time_s": round(float(seconds), 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "curves": curves or {},
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default), encoding="utf-8")
    tmp.replace(path)
    if plots:
        plot_results(record, path.with_suffix(""))
    record["json"] = str(path)
    return record


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def group_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"i2t/R@1": v, "rsum": w}`` -> ``{"i2t": {"R@1": v}, "summary": {"rsum": w}}``."""
    groups: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        scen, sep, metric = key.partition("/")
        if not sep:
            scen, metric = "summary", key
        groups.setdefault(scen, {})[metric] = value
    return groups


def format_table(metrics: dict[str, float]) -> str:
    """One line per scenario: ``scenario  metric value  metric value ...``."""
    if not metrics:
        return "(no metrics: the split has no ground truth)"
    groups = group_metrics(metrics)
    if "summary" in groups:
        groups["summary"] = groups.pop("summary")  # last
    width = max(len(s) for s in groups)
    lines = []
    for scen, vals in groups.items():
        cells = [f"{m} {_fmt(m, v)}" for m, v in vals.items()]
        lines.append(f"{scen:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric.startswith("ndcg") else f"{value:.2f}"


def plot_results(record: dict[str, Any], stem: str | Path) -> list[Path]:
    """``<stem>_recall.png`` (Recall@K curves) and ``<stem>_scenarios.png`` (one bar chart
    panel per scenario); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    written = []
    curves = record.get("curves") or {}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, ys in curves.items():
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, label=name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Recall@K, split {record.get('protocol', {}).get('split')}")
        fig.tight_layout()
        p = Path(f"{stem}_recall.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    groups: dict[str, dict[str, float]] = {}
    for scen, vals in group_metrics(record.get("metrics") or {}).items():
        # recalls (percent) and NDCG (fractions) in separate panels, so both stay readable
        rec = {m: v for m, v in vals.items() if not m.startswith("ndcg") and m not in ("medr", "meanr", "n_queries")}
        ndcg = {m: v for m, v in vals.items() if m.startswith("ndcg")}
        if rec:
            groups[scen] = rec
        if ndcg:
            groups[f"{scen} NDCG" if rec else scen] = ndcg
    if groups:
        n = len(groups)
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, (scen, vals) in zip(axes.flat, groups.items()):
            is_ndcg = all(m.startswith("ndcg") for m in vals)
            ax.bar(range(len(vals)), list(vals.values()), color="tab:orange" if is_ndcg else "tab:blue")
            if is_ndcg:
                ax.set_ylim(0, 1)
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(list(vals.keys()), rotation=45, ha="right", fontsize=7)
            ax.set_title(scen, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        p = Path(f"{stem}_scenarios.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written
