"""`featvlr ablate`: the product of a grid and seeds, each a normal run folder, then one report.

    featvlr ablate --config configs/demo_vse.yaml --grid loss.margin=0.1,0.2 --grid method=vse,hrem \\
        --seeds 0,1,2 --out runs/ablation

Every combination is validated before anything runs (an unknown key or a value of the wrong
type is refused up front). Runs already finished (their ``eval/<test split>.json`` exists)
are skipped, and a run interrupted mid-way resumes from its ``ckpt/last.pt``, so an
interrupted ablation picks up where it stopped. ``ablation.yaml`` records the grid, its keys
(``grid_keys``: the keys the report labels and plots), the seeds and the run folders, so
``featvlr report <ablation folder>`` rebuilds the same report. Runs share one process's feature cache
(:func:`featvlr.cache.store.open_store` keeps the in-memory split), and with ``jobs > 1`` several
worker processes take runs side by side (one per GPU when there are several).
"""
from __future__ import annotations

import itertools
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from featvlr.config import Config, load_config, parse_override, read_yaml
from featvlr.core.errors import ConfigError
from featvlr.tuning.space import split_commas


@dataclass
class PlannedRun:
    """One cell of the ablation: its grid values, seed, overrides and folder."""

    values: dict[str, Any]
    seed: int
    overrides: list[str]
    run_dir: Path
    config: Config

    @property
    def variant(self) -> str:
        return variant_name(self.values)

    def finished(self) -> bool:
        """All epochs trained, and the test split evaluated when the config has one."""
        split = self.config.data.test_split
        if split and not (self.run_dir / "eval" / f"{split}.json").exists():
            return False
        last = self.run_dir / "ckpt" / "last.pt"
        if not last.exists():
            return False
        from featvlr.core.checkpoint import load_checkpoint

        return int(load_checkpoint(last)["epoch"]) >= self.config.train.epochs


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["loss.margin=0.1,0.2", "method=vse,hrem"]`` -> ``{"loss.margin": [0.1, 0.2], ...}``.

    Values are comma-separated and each parsed as YAML (``0.1`` a number, ``true`` a bool,
    ``[1,2]`` is not split: brackets protect commas).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--grid expects key=v1,v2,... (e.g. --grid method=vse,hrem), got {item!r}")
        key, raw = parse_override(item)
        if not isinstance(raw, str):  # a single YAML value (number, bool, list)
            raw_values = [raw]
        else:
            raw_values = [yaml.safe_load(v) if v.strip() else "" for v in split_commas(raw)]
        if key in grid:
            raise ConfigError(f"--grid {key} given twice")
        if not raw_values:
            raise ConfigError(f"--grid {key} has no values")
        grid[key] = raw_values
    return grid


def _fmt_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value).lower() if isinstance(value, bool) else str(value)


def variant_name(values: dict[str, Any]) -> str:
    """A folder-safe name of a grid cell, e.g. ``loss.margin=0.1__method=vse`` (``base`` if empty)."""
    if not values:
        return "base"
    parts = [f"{k}={_fmt_value(v)}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", "__".join(parts))


def plan_runs(config: str | Path, grid: dict[str, list[Any]], seeds: list[int], out: str | Path,
              extra: list[str] | None = None) -> list[PlannedRun]:
    """Expand grid x seeds into validated runs (raises before anything runs on a bad cell)."""
    base = read_yaml(config)
    out = Path(out)
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        for seed in seeds:
            overrides = list(extra or []) + [f"{k}={_fmt_value(v)}" for k, v in values.items()] + [f"train.seed={seed}"]
            # a bad value is blamed on the option that gave it: --grid KEY, --seeds, else --set
            sources = {**{k: f"--grid {k}" for k in values}, "train.seed": "--seeds"}
            try:
                cell_base = base_for_method(base, values.get("method"), config)
                cfg = load_config(None, overrides, base=cell_base, sources=sources)
            except ConfigError as exc:
                raise ConfigError(f"{config}: grid cell {variant_name(values)}: {exc}") from None
            runs.append(PlannedRun(values, seed, overrides, out / variant_name(values) / f"seed{seed}", cfg))
    return runs


def method_sibling(config: str | Path | None, base: dict[str, Any], method: str) -> Path | None:
    """The same dataset's config of ``method`` beside ``config``: ``configs/demo_hrem.yaml`` for
    ``configs/demo_vse.yaml`` and ``hrem``; None when the name does not follow that pattern or
    the file is missing."""
    if config is None:
        return None
    path = Path(config)
    suffix = f"_{base.get('method', 'vse')}"
    if not path.stem.endswith(suffix):
        return None
    sibling = path.with_name(f"{path.stem[:-len(suffix)]}_{method}{path.suffix}")
    return sibling if sibling.is_file() else None


def base_for_method(base: dict[str, Any], method: Any, config: str | Path | None = None) -> dict[str, Any]:
    """The base config for a grid cell that switches ``method``.

    When the same dataset's config of that method lies beside ``config`` (``demo_hrem.yaml``
    beside ``demo_vse.yaml``), its ``model`` and ``loss`` sections are the method's recipe for
    this dataset (warm-ups and switch-on points sized to it, e.g. HREM's
    ``graph_warmup_steps``); ``data``, ``train`` and ``eval`` stay the base's, so every cell
    has the same data and budget. Otherwise the base's ``model`` and ``loss`` values that the
    new method also has are kept (``embed_dim``, ``margin``, ...) and the others fall back to
    the new method's defaults. Values the grid itself sets are still validated strictly."""
    import copy
    import dataclasses

    from featvlr.methods.registry import get_method

    base = copy.deepcopy(base)
    if not isinstance(method, str) or method == base.get("method", "vse"):
        return base
    sibling = method_sibling(config, base, method)
    if sibling is not None:
        own = read_yaml(sibling)
        base["method"] = method
        for section in ("model", "loss"):
            base[section] = copy.deepcopy(own.get(section) or {})
        return base
    cls = get_method(method)
    for section, options in (("model", cls.ModelOptions), ("loss", cls.LossOptions)):
        known = {f.name for f in dataclasses.fields(options)}
        if isinstance(base.get(section), dict):
            base[section] = {k: v for k, v in base[section].items() if k in known}
    return base


def _run_one(run: PlannedRun, label: str | None = None) -> dict[str, Any]:
    """Train one cell; a run that fails (a diverged learning rate, say) is recorded, not fatal.
    Its training lines on stderr start with ``[label]`` (default: the variant and seed)."""
    from featvlr.core.errors import FeatvlrError
    from featvlr.training.trainer import train
    from featvlr.tuning.progress import named_progress

    if run.finished():
        return {"run_dir": str(run.run_dir), "status": "skipped"}
    resume = (run.run_dir / "ckpt" / "last.pt").exists()
    try:
        with named_progress(label or f"{run.variant} seed{run.seed}"):
            train(run.config, run.run_dir, resume=resume)
    except FeatvlrError as exc:
        return {"run_dir": str(run.run_dir), "status": "failed", "error": str(exc)}
    return {"run_dir": str(run.run_dir), "status": "resumed" if resume else "trained"}


def _worker(runs: list[PlannedRun], out: Path, url: str, heartbeat_s: float, threads: int | None,
            gpu: int | None) -> list[dict[str, Any]]:
    """One worker of the ablation's study (in this process, or one of ``jobs`` processes)."""
    import torch

    from featvlr.tuning.grid import work_on_grid

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads:
        torch.set_num_threads(max(1, threads))
    return work_on_grid(runs, out, url, heartbeat_s=heartbeat_s, run_one=_run_one)


def default_jobs() -> int:
    """One worker per GPU when there are several; on CPU one worker per 4 cores (at least 1)."""
    import torch

    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return max(1, (os.cpu_count() or 1) // 4)


def run_ablation(config: str | Path, grid_items: list[str], seeds: list[int], out: str | Path, *,
                 jobs: int | None = None, extra: list[str] | None = None, report: bool = True,
                 progress: bool = False, storage: str | None = None, heartbeat_s: float | None = None
                 ) -> dict[str, Any]:
    """Plan, run (skipping finished runs) and report; returns statuses and report paths.

    The cells are the points of an Optuna grid study (``<out>/study.db``, or ``storage``):
    ``jobs`` processes here, and any other worker running the same command with the same
    ``storage``, each take the next cell no one has; a worker whose cells are done waits for
    the cells others are training, so that every worker ends with the whole report."""
    from featvlr.tuning.storage import DEFAULT_HEARTBEAT_S, default_url, open_storage

    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0):
        raise ConfigError(f"--jobs: expected >= 0 (0: the default), got {jobs}")
    grid = parse_grid(grid_items)
    runs = plan_runs(config, grid, seeds, out, (extra or []) + [f"train.progress={str(progress).lower()}"])
    out = Path(out)
    url = storage or default_url(out)
    heartbeat_s = heartbeat_s or DEFAULT_HEARTBEAT_S
    if storage:
        open_storage(url, heartbeat_s=heartbeat_s)  # an unreachable storage stops here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    open_storage(url, heartbeat_s=heartbeat_s)  # its tables made once, before any worker starts
    (out / "ablation.yaml").write_text(yaml.safe_dump({
        "config": str(config), "grid": grid, "grid_keys": list(grid), "seeds": seeds, "extra": list(extra or []),
        "runs": [str(r.run_dir.relative_to(out)) for r in runs], "storage": url}, sort_keys=False),
        encoding="utf-8")
    jobs = jobs or default_jobs()
    todo = [r for r in runs if not r.finished()]
    statuses = {str(r.run_dir): {"run_dir": str(r.run_dir), "status": "skipped"} for r in runs if r not in todo}
    if todo and (jobs <= 1 or len(todo) <= 1):
        for s in _worker(runs, out, url, heartbeat_s, None, None):
            statuses[s["run_dir"]] = s
    elif todo:
        import torch

        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_worker, runs, out, url, heartbeat_s, threads, (i % n_gpu) if n_gpu else None)
                       for i in range(min(jobs, len(todo)))]
            for f in futures:
                for s in f.result():
                    statuses[s["run_dir"]] = s
    for r in runs:  # trained by a worker elsewhere (another process or machine on the same study)
        if str(r.run_dir) not in statuses:
            statuses[str(r.run_dir)] = {"run_dir": str(r.run_dir),
                                        "status": "trained elsewhere" if r.finished() else "not finished"}
    result: dict[str, Any] = {"runs": [statuses[str(r.run_dir)] for r in runs]}
    if report:
        from featvlr.report import write_report

        done = [r.run_dir for r in runs if r.finished()]
        first = [r.run_dir for r in runs if r.values == runs[0].values and r.run_dir in done]
        result["report"] = write_report(done, out / "report", baseline=str(first[0]) if first else None,
                                        grid_keys=list(grid))
    return result


__all__ = ["PlannedRun", "parse_grid", "plan_runs", "run_ablation", "split_commas", "variant_name", "default_jobs"]
