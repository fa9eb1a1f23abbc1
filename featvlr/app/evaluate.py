"""``featvlr eval`` as a library function: score a run, embeddings or a similarity matrix.

Three inputs, one protocol:

- a run folder or checkpoint (``featvlr.inference.loading.load_method``), embedded on a cache split;
- an ``.npz`` with ``images`` ``[n_images, d]`` and ``texts`` ``[n_texts, d]`` embeddings
  (or ``queries`` and ``gallery`` for composed retrieval) from any model;
- an ``.npy`` similarity matrix ``[n_images, n_texts]`` from any model (i2t and t2i, and
  TERAN's NDCG when a relevance matrix is given).

The caption -> image index and the ROUGE-L relevance come from ``--cache``/``--split``, or
the relevance from ``--relevance`` (read by :func:`featvlr.retrieval.relevance.load_relevance`). The
results JSON records the metrics, the protocol, the run config and seed, the versions, the
device and the time taken; a Recall@K plot and a per-scenario bar chart go beside it.

Example::

    record = run_eval("runs/f30k_vse", split="test", scenarios="all")
    record = run_eval(embeddings="mine.npz", cache="features/f30k.h5", split="test",
                      json_path="mine.json", flags=EvalFlags(folds="1,5"))

A run is evaluated by its task (:func:`featvlr.tasks.evaluate_method`), as the trainer does; the
library pieces live in :mod:`featvlr.evaluation`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.device import pick_device
from featvlr.core.errors import FeatvlrError, InputError
from featvlr.evaluation.inputs import (
    arrays_or_split,
    check_composed_embeddings,
    check_embeddings,
    eval_dir,
    has_relevance,
    load_npz,
    load_sims,
    open_split,
)
from featvlr.evaluation.options import EvalOptions, parse_ints, parse_scenarios, protocol_record
from featvlr.evaluation.plots import group_metrics, plot_results
from featvlr.evaluation.results import format_table, write_results

__all__ = ["EvalFlags", "format_table", "group_metrics", "plot_results", "run_eval", "submission_guide",
           "write_results"]


def _truth_file(cache: str | Path | None, split: str) -> Path | None:
    """The truth file of a composed split the cache was extracted from, when its source folder
    has one beside it (the demo's ``truth/cirr_<split>_edits.json``)."""
    from featvlr.evaluation.inputs import source_truth_folder

    folder = source_truth_folder(cache)
    if folder is None:
        return None
    truth = folder / f"cirr_{split}_edits.json"
    return truth if truth.is_file() else None


def submission_guide(files: Sequence[str | Path], split: str, cache: str | Path | None) -> list[str]:
    """The lines that end an evaluation of a split without ground truth: where the test-server
    files are and the command that scores them (against the source's truth file when there is
    one, as for the demo; else the CIRR evaluation server)."""
    from featvlr.evaluation.composed import CIRR_SERVER

    lines = [f"no ground truth in split {split}: wrote the test-server files"]
    lines += [f"  {f}" for f in files]
    truth = _truth_file(cache, split)
    recall = next((str(f) for f in files if Path(f).name.startswith("recall_submission_")), None)
    if truth is not None and recall is not None:
        lines.append(f"score them: featvlr eval --submission {recall} --truth {truth}")
    else:
        lines.append(f"score them: upload both to the CIRR evaluation server ({CIRR_SERVER})")
    return lines


@dataclasses.dataclass(frozen=True)
class EvalFlags:
    """``featvlr eval``'s protocol flags. None: the run config's value for a run, else the
    default of :class:`~featvlr.evaluation.options.EvalOptions`.

    folds (``"1,5"``: COCO 5K and 1K), ks, ndcg_ks, ndcg_exp_k: cut-offs; batch_size,
    chunk_elements: embedding batches and most scores held at once; backend, faiss_k:
    ``exact`` or ``faiss-flat``/``faiss-ivf``/``faiss-hnsw`` with top-``faiss_k`` lists
    (embeddings only); t2t_without_siblings: also t2t with the query's sibling captions
    removed; composed_protocol: ``auto``, ``cirr``, ``fashioniq`` or ``shoes``;
    first_images: also every scenario on the first N images alone (``*_first1k`` keys;
    default: 1000 for a COCO run, else 0).
    """

    folds: str | Sequence[int] | None = None
    ks: str | Sequence[int] | None = None
    ndcg_ks: str | Sequence[int] | None = None
    ndcg_exp_k: int | None = None
    batch_size: int | None = None
    chunk_elements: int | None = None
    backend: str = "exact"
    faiss_k: int = 100
    t2t_without_siblings: bool = False
    composed_protocol: str = "auto"
    first_images: int | None = None

    def options(self, config: Any = None) -> EvalOptions:
        """The options of an evaluation: the flags given, over ``config``'s test protocol."""
        overrides = dict(folds=parse_ints(self.folds, "folds"), ks=parse_ints(self.ks, "ks"),
                         ndcg_ks=parse_ints(self.ndcg_ks, "ndcg-ks"), ndcg_exp_k=self.ndcg_exp_k or None,
                         batch_size=self.batch_size or None, chunk_elements=self.chunk_elements or None,
                         backend=self.backend, faiss_k=self.faiss_k, t2t_without_siblings=self.t2t_without_siblings,
                         composed_protocol=self.composed_protocol, first_images=self.first_images)
        if config is not None:
            return EvalOptions.from_config(config, final=True, **overrides)
        return EvalOptions(**{k: v for k, v in overrides.items() if v is not None})


def run_eval(target: str | Path | Sequence[str | Path] | None = None, *, embeddings: str | Path | None = None,
             sims: str | Path | None = None, cache: str | Path | None = None, relevance: Any = None,
             split: str = "test", scenarios: str | Sequence[str] | None = "all", json_path: str | Path | None = None,
             flags: EvalFlags | None = None, device: str = "auto", plots: bool = True,
             print_table: bool = True, examples: int = 0) -> dict[str, Any]:
    """Evaluate one input (see the module docstring); write the results JSON and plots.

    Args:
        target: a run folder or a checkpoint file (or None with ``embeddings``/``sims``); a
            list of two or more: their ensemble (the mean of their similarity matrices,
            :mod:`featvlr.evaluation.ensemble`; i2t and t2i; the members are recorded).
        embeddings: ``.npz`` with ``images`` and ``texts`` (or ``queries`` and ``gallery``).
        sims: ``.npy`` ``[n_images, n_texts]`` scores.
        cache: the feature cache (caption -> image index, relevance, composed data).
        relevance: ``[n_texts, n_images]`` ROUGE-L relevance file, or a list of ``FILE`` /
            ``KIND=FILE`` (another kind, e.g. ``spice=FILE``: NDCG keys ``*_spice``); overrides
            the cache's matrices of those kinds.
        split: the cache split (for a run, ``test`` also finds the config's ``data.test_split``).
        scenarios: ``"all"`` (every scenario the input allows) or names, e.g. ``"i2t,t2i"``.
        json_path: the results JSON (default ``<run>/eval/<split>.json``, or
            ``<input>.eval.<split>.json`` beside an embeddings/sims file).
        flags: the protocol flags (:class:`EvalFlags`).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        plots, print_table: write the PNGs; print the table.
        examples: for a run, write ``<split>_examples.html`` beside the JSON with this many seeded
            queries per scenario (:mod:`featvlr.inference.examples`); 0: none.

    Returns:
        The results record (the JSON's content, plus ``"json"``: its path).
    """
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise FeatvlrError(f"--examples: expected >= 0, got {examples}")
    t0 = time.perf_counter()
    flags = flags or EvalFlags()
    members: list[Path] = []
    if isinstance(target, (list, tuple)):
        members = [Path(t) for t in target]
        target = members[0] if len(members) == 1 else (None if not members else members)
        members = members if len(members) > 1 else []
    given = [x for x in (target, embeddings, sims) if x is not None]
    if len(given) != 1:
        raise FeatvlrError("give exactly one input: a run folder or checkpoint, --embeddings FILE or --sims FILE")
    if examples and target is None:
        raise FeatvlrError("--examples needs a run folder or checkpoint (it shows what the run retrieves)")
    chosen = parse_scenarios(scenarios)
    dev = str(pick_device(device))
    config = None
    config_sha256 = None
    seed = None
    curves: dict[str, list[float]] = {}
    extra: dict[str, Any] = {}
    inputs: dict[str, Any] = {}

    if members:
        if examples:
            raise FeatvlrError("--examples shows one run's retrievals, not an ensemble's")
        metrics, config, opts, json_default = _ensemble_metrics(members, cache, relevance, split, chosen, flags, dev,
                                                                curves, inputs)
    elif target is not None:
        tpath = Path(target)
        if not tpath.exists():
            raise InputError(tpath, "no such run folder or checkpoint")
        from featvlr.inference.loading import load_method

        method, config = load_method(tpath, dev)
        from featvlr.evaluation.results import checkpoint_config_hash

        config_sha256 = checkpoint_config_hash(tpath)  # the checkpoint's config, never the caller's
        seed = getattr(getattr(config, "train", None), "seed", None)
        opts = flags.options(config)
        cache_path = cache or getattr(getattr(config, "data", None), "cache", None)
        if not cache_path:
            raise FeatvlrError("the run's config names no feature cache; pass --cache")
        inputs.update(kind="checkpoint", path=str(tpath), cache=str(cache_path),
                      method=getattr(method, "name", type(method).__name__))
        out_dir = (Path(json_path).parent if json_path else eval_dir(tpath)) / "submission"
        metrics, split_name = _method_metrics(method, config, cache_path, split, chosen, opts, dev, curves, extra,
                                              out_dir)
        inputs["split"] = split_name
        json_default = eval_dir(tpath) / f"{split_name}.json"
    else:
        opts = flags.options()
        st = open_split(cache, split) if cache is not None else None
        inputs.update(cache=None if cache is None else str(cache), split=st.name if st is not None else split)
        source = Path(embeddings if embeddings is not None else sims)
        json_default = source.with_name(f"{source.stem}.eval.{split}.json")
        if embeddings is not None:
            inputs.update(kind="embeddings", path=str(source))
            arrays = load_npz(source)
            if "queries" in arrays:
                inputs["kind"] = "composed embeddings"
                out_dir = Path(json_path).parent if json_path else json_default.parent
                metrics = _composed_from_arrays(arrays, st, source, chosen, opts, curves, out_dir, extra)
            else:
                metrics = _embeddings_metrics(arrays, st, source, relevance, chosen, opts, curves, inputs, dev)
        else:
            inputs.update(kind="sims", path=str(source))
            metrics = _sims_metrics(source, st, relevance, chosen, opts, curves, inputs, dev)
    out = Path(json_path) if json_path else json_default
    if examples:
        from featvlr.inference.examples import write_run_examples

        extra["examples"] = str(write_run_examples(method, config, tpath, cache_path, inputs["split"], examples,
                                                   out.parent / f"{inputs['split']}_examples.html", dev,
                                                   scenarios=chosen))
    protocol = protocol_record(split=inputs.get("split"), metrics=metrics, folds=opts.folds, ks=opts.ks,
                               ndcg_ks=opts.ndcg_ks, ndcg_exp_k=opts.ndcg_exp_k, backend=opts.backend,
                               t2t_without_siblings=opts.t2t_without_siblings, first_images=opts.first_images)
    record = write_results(out, metrics, split=inputs.get("split"), cfg=config, curves=curves, device=dev,
                           seconds=time.perf_counter() - t0,
                           checkpoint=inputs.get("path") if target is not None and not members else None,
                           protocol=protocol, inputs=inputs, seed=seed, extra=extra, plots=plots,
                           config_sha256=config_sha256)
    if print_table:
        print(format_table(metrics))
        print(f"results: {out}")
    return record


def _method_metrics(method: Any, config: Any, cache_path: str | Path, split: str, chosen: list[str] | None,
                    opts: EvalOptions, device: str, curves: dict, extra: dict, out_dir: Path) -> tuple[dict, str]:
    """Metrics of a loaded method on a cache split, evaluated by the method's task as the
    trainer does (a composed FashionIQ split: over its per-category splits)."""
    from featvlr.cache.store import FeatureStore
    from featvlr.tasks import evaluate_method, get_task

    if chosen is not None:
        _check_task_scenarios(method, chosen)
    task = get_task(method.task)
    store = FeatureStore(cache_path)
    name = split
    if not task.has_split(store, name):
        alias = getattr(getattr(config, "data", None), f"{split}_split", None)
        if alias and task.has_split(store, alias):
            name = alias
    st = task.eval_split(store, name) if task.has_split(store, name) else store.split(name)  # the latter raises
    metrics = evaluate_method(method, st, opts, chosen, device, curves=curves, submission_dir=out_dir)
    if not metrics and out_dir.exists():
        extra["submission"] = sorted(str(p) for p in out_dir.glob(f"*_{st.name}.json"))
    return metrics, st.name


def _ensemble_metrics(members: list[Path], cache: str | Path | None, relevance: str | Path | None, split: str,
                      chosen: list[str] | None, flags: EvalFlags, dev: str, curves: dict,
                      inputs: dict) -> tuple[dict, Any, Any, Path]:
    """The metrics of the mean of the members' similarity matrices on one split (each member
    on its own config's cache unless ``cache`` is given), and each member's own metrics."""
    from featvlr.cache.store import FeatureStore
    from featvlr.evaluation.cross_modal import CrossModalScores, cross_modal_metrics
    from featvlr.evaluation.ensemble import check_same_split, method_sims
    from featvlr.evaluation.results import checkpoint_config_hash
    from featvlr.inference.loading import load_method
    from featvlr.tasks import get_task

    if chosen is not None and any(s not in ("i2t", "t2i") for s in chosen):
        raise FeatvlrError("an ensemble averages similarity matrices: it gives i2t and t2i only")
    scenarios = chosen or ["i2t", "t2i"]
    records, total, first, first_config, opts = [], None, None, None, None
    for path in members:
        if not path.exists():
            raise InputError(path, "no such run folder or checkpoint")
        method, config = load_method(path, dev)
        cache_path = cache or getattr(getattr(config, "data", None), "cache", None)
        if not cache_path:
            raise FeatvlrError(f"{path}: the run's config names no feature cache; pass --cache")
        store, name = FeatureStore(cache_path), split
        task = get_task(method.task)
        alias = getattr(getattr(config, "data", None), f"{split}_split", None)
        if not task.has_split(store, name) and alias and task.has_split(store, alias):
            name = alias
        st = task.eval_split(store, name) if task.has_split(store, name) else store.split(name)
        if first is None:
            first, first_config, opts = st, config, flags.options(config)
            data = arrays_or_split(st, relevance, st.n_images, st.n_texts, inputs)
        else:
            check_same_split(first, st, str(path))
        sims = method_sims(method, st, opts, dev)
        own = cross_modal_metrics(CrossModalScores(sims=sims), data, scenarios, _matrix_options(opts, data))
        records.append({"path": str(path), "method": getattr(method, "name", type(method).__name__),
                        "cache": str(cache_path), "config_sha256": checkpoint_config_hash(path),
                        "seed": getattr(getattr(config, "train", None), "seed", None), "metrics": own})
        total = sims if total is None else total.add_(sims.to(total.device))
        del method, sims
    mean = total / len(members)  # ensemble.mean_sims of the members, summed one at a time
    inputs.update(kind="ensemble", split=first.name, members=records,
                  ensemble="mean of the members' [n_images, n_texts] similarity matrices")
    metrics = cross_modal_metrics(CrossModalScores(sims=mean), data, scenarios, _matrix_options(opts, data),
                                  curves=curves)
    names = "+".join(p.name if p.is_dir() else p.stem for p in members)
    return metrics, first_config, opts, eval_dir(members[0]) / f"ensemble_{names}.{first.name}.json"


def _check_task_scenarios(method: Any, chosen: list[str]) -> None:
    """Refuse scenarios of the other task, naming the methods that provide them."""
    from featvlr.methods.registry import list_methods

    task = getattr(method, "task", "cross_modal")
    other = [s for s in chosen if (s == "composed") != (task == "composed")]
    if not other:
        return
    wanted = "composed" if other[0] == "composed" else "cross_modal"
    providers = list_methods(task=wanted)
    name = getattr(method, "name", type(method).__name__)
    raise FeatvlrError(f"scenario {other[0]} needs a {wanted.replace('_', '-')} method "
                       f"({', '.join(providers) or 'none registered'}); this run is {name!r}, a "
                       f"{task.replace('_', '-')} method")


def _embeddings_metrics(arrays: dict[str, np.ndarray], st: Any, path: Path, relevance: str | Path | None,
                        chosen: list[str] | None, opts: EvalOptions, curves: dict, inputs: dict,
                        dev: str) -> dict[str, float]:
    """Every scenario the embeddings allow (the uni-modal ones with a relevance matrix)."""
    from featvlr.evaluation.cross_modal import CrossModalScores, cross_modal_metrics

    img, txt = check_embeddings(arrays, path, st, dev)
    data = arrays_or_split(st, relevance, img.shape[0], txt.shape[0], inputs)
    return cross_modal_metrics(CrossModalScores(img, txt), data, chosen,
                               dataclasses.replace(opts, teran_ndcg=has_relevance(data)), curves=curves)


def _matrix_options(opts: EvalOptions, data: Any) -> EvalOptions:
    """The options of a similarity matrix's i2t and t2i: exact ranking, TERAN's NDCG when
    there is relevance."""
    return dataclasses.replace(opts, teran_ndcg=has_relevance(data), backend="exact")


def _sims_metrics(path: Path, st: Any, relevance: str | Path | None, chosen: list[str] | None,
                  opts: EvalOptions, curves: dict, inputs: dict, dev: str) -> dict[str, float]:
    """i2t/t2i (and TERAN's NDCG when there is relevance) from a similarity matrix file."""
    import torch

    from featvlr.evaluation.cross_modal import CrossModalScores, cross_modal_metrics

    if chosen is not None:
        bad = [s for s in chosen if s not in ("i2t", "t2i")]
        if bad:
            raise FeatvlrError(f"scenario {bad[0]} needs embeddings; a similarity matrix gives i2t and t2i only")
    sims = load_sims(path)
    n_img, n_txt = sims.shape
    if st is not None and (n_img, n_txt) != (st.n_images, st.n_texts):
        raise InputError(path, f"shape {sims.shape}, but split {st.name!r} has {st.n_images} images and "
                               f"{st.n_texts} texts (expected [n_images, n_texts])")
    if not (np.issubdtype(sims.dtype, np.floating) or np.issubdtype(sims.dtype, np.integer)):
        raise InputError(path, f"scores must be numbers, got dtype {sims.dtype}")
    s = torch.as_tensor(np.asarray(sims), device=dev) if dev != "cpu" else sims
    data = arrays_or_split(st, relevance, n_img, n_txt, inputs)
    if chosen is None:  # "all": say what a matrix cannot give
        from featvlr.evaluation.options import SCENARIOS

        skipped = [name for name in SCENARIOS if name not in ("i2t", "t2i")]
        inputs["skipped"] = {name: "a similarity matrix gives i2t and t2i only" for name in skipped}
        print(f"skipped {', '.join(skipped)}: a similarity matrix gives i2t and t2i only (they need "
              "--embeddings)", flush=True)
    try:
        return cross_modal_metrics(CrossModalScores(sims=s), data, chosen or ["i2t", "t2i"],
                                   _matrix_options(opts, data), curves=curves)
    except FeatvlrError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, str(exc)) from None


def _composed_from_arrays(arrays: dict[str, np.ndarray], st: Any, path: Path, chosen: list[str] | None,
                          opts: EvalOptions, curves: dict, out_dir: Path, extra: dict) -> dict[str, float]:
    """Composed embeddings of one cache split, with the one composed evaluation."""
    from featvlr.evaluation.composed import evaluate_composed_split

    if chosen is not None and chosen != ["composed"]:
        raise FeatvlrError(f"composed embeddings give only the composed scenario, not {', '.join(chosen)}")
    if st is None:
        raise FeatvlrError("composed embeddings need --cache (targets, references, image sets)")
    q, g = check_composed_embeddings(arrays, path, st)
    written: list[str] = []
    metrics = evaluate_composed_split(q, g, st, protocol=opts.composed_protocol, chunk_elements=opts.chunk_elements,
                                      curves=curves, submission_dir=out_dir, submission_files=written)
    if written:
        extra["submission"] = written
    return metrics
