"""`featvlr compare`: methods compared after the same tuning budget (Musgrave et al.'s "metric
learning reality check" protocol, on cached features).

    featvlr compare --methods vse,hrem,covlr,rvlr --dataset demo --budget 12 --seeds 0,1,2

For each method, ``<config-dir>/<dataset>_<method>.yaml`` is tuned on dev over the space its
``tune.space`` declares, ``budget`` trials each (a re-run tops a study up to the budget, it
never exceeds it); the best trial's values are retrained with every seed (``<out>/<method>/
tuned/seed<s>``), and each retrained run evaluates the test split once. With ``untuned`` the
config as it is is also trained over the seeds. ``<out>/compare.md`` holds the tuned-best
table beside the untuned one, the per-seed table and the paired differences against the first
method, with the budget stated; ``<out>/report`` is the usual report over every run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.config import load_config
from featvlr.core.errors import ConfigError, InputError
from featvlr.core.fileio import atomic_write_text
from featvlr.tuning.progress import fmt_params, say
from featvlr.tuning.space import config_space, format_value, parse_space


def counted_trials(study) -> int:
    """Trials that spent budget: complete, pruned, or failed on their own (a diverged run);
    a trial whose worker was killed or stopped is not counted (it is re-queued or redone)."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("error"):
            n += 1
    return n


def peek_study(url: str, name: str):
    """The study ``name`` in ``url``, or None when it does not exist yet."""
    import optuna

    from featvlr.tuning.storage import open_storage

    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return None


def _plan(config: Path, overrides: list[str], seeds: list[int], folder: Path) -> list:
    from featvlr.tuning.ablate import PlannedRun

    runs = []
    for s in seeds:
        sets = overrides + [f"train.seed={s}"]
        runs.append(PlannedRun({}, s, sets, folder / f"seed{s}", load_config(config, sets)))
    return runs


def run_compare(methods: list[str], config_dir: str | Path, dataset: str, budget: int, seeds: list[int],
                out: str | Path, *, extra: list[str] | None = None, storage: str | None = None, seed: int = 0,
                pruner: str = "median", untuned: bool = True, progress: bool = False) -> dict[str, Any]:
    from featvlr.tuning.ablate import _run_one
    from featvlr.tuning.tune import run_tune, summarize

    out, config_dir, extra = Path(out), Path(config_dir), list(extra or [])
    if not methods:
        raise ConfigError("--methods: name at least one method")
    if budget < 1:
        raise ConfigError(f"--budget: expected at least 1 trial, got {budget}")
    if not seeds:
        raise ConfigError("--seeds: name at least one seed")
    configs = {}
    for m in methods:  # every config and space is checked before anything runs
        path = config_dir / f"{dataset}_{m}.yaml"
        if not path.exists():
            raise InputError(path, f"no config for method {m!r} on dataset {dataset!r}")
        cfg = load_config(path, extra)
        if cfg.method != m:
            raise InputError(path, f"is a {cfg.method!r} config, not {m!r}")
        items = config_space(path)
        if not items:
            raise InputError(path, "declares no tune.space (the keys and ranges a fair comparison searches)")
        parse_space(path, items, extra, where=f"{path}: tune.space")
        configs[m] = (path, cfg)
    out.mkdir(parents=True, exist_ok=True)
    progress_set = [f"train.progress={str(progress).lower()}"]
    rows: dict[str, dict[str, Any]] = {}
    for m, (path, cfg) in configs.items():
        tune_dir = out / m / "tune"
        name = f"{out.resolve().name}-{m}"
        url = storage or f"sqlite:///{(tune_dir / 'study.db').resolve()}"
        study = peek_study(url, name) if (storage or (tune_dir / "study.db").exists()) else None
        done = counted_trials(study) if study is not None else 0
        need = max(0, budget - done)
        say(f"{m}: {done} of {budget} trials done" + (f"; tuning {need} more" if need else ""))
        if need:
            result = run_tune(path, None, tune_dir, trials=need, extra=extra, storage=storage, study_name=name,
                              seed=seed, pruner=pruner, progress=progress)
        else:
            result = summarize(study, tune_dir, [], f"{cfg.train.select_split} {cfg.train.select_metric}",
                               report=False)
        best = result["best"]
        if best is None:
            raise InputError(tune_dir, f"{m}: no trial completed in {budget}; widen the space or raise --budget")
        best_sets = [f"{k}={format_value(v)}" for k, v in best["params"].items()]
        say(f"{m}: best trial {best['number']}, dev {best['value']:.2f} with {fmt_params(best['params'])}; "
            f"retraining it with seeds {','.join(map(str, seeds))}")
        tuned = _plan(path, extra + progress_set + best_sets, seeds, out / m / "tuned")
        plain = _plan(path, extra + progress_set, seeds, out / m / "untuned") if untuned else []
        for run in tuned + plain:
            status = _run_one(run, label=f"{m}/{run.run_dir.parent.name}/seed{run.seed}")
            if status["status"] == "failed":
                say(f"{m}: {run.run_dir} failed: {status['error']}")
        rows[m] = {"config": str(path), "trials": dict(result["counts"]), "best_trial": best["number"],
                   "best_dev": best["value"], "best_params": best["params"], "best_run": best["run_dir"],
                   "metric": cfg.train.select_metric,
                   "tuned": [str(r.run_dir) for r in tuned if r.finished()],
                   "untuned": [str(r.run_dir) for r in plain if r.finished()]}
    return write_compare(out, rows, methods, budget, seeds, seed=seed, pruner=pruner)


def _test_value(run_dir: str, metric: str) -> float | None:
    path = Path(run_dir) / "eval" / "test.json"
    if not path.exists():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("metrics", {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _by_seed(paths: list[str], metric: str) -> dict[int, float]:
    out = {}
    for p in paths:
        value = _test_value(p, metric)
        if value is not None:
            out[int(Path(p).name.removeprefix("seed"))] = value
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def write_compare(out: Path, rows: dict[str, dict[str, Any]], methods: list[str], budget: int, seeds: list[int],
                  *, seed: int, pruner: str) -> dict[str, Any]:
    """``compare.md`` and ``compare.json`` (tuned best beside untuned, per seed, paired
    differences against the first method) and the usual report over every run."""
    from featvlr.report import write_report

    metric = rows[methods[0]]["metric"]
    budget_line = (f"Budget: {budget} trials per method on the dev split ({rows[methods[0]]['metric']} of the "
                   f"selection split), TPE seed {seed}, {pruner} pruning; each method from its own config and "
                   f"tune.space. The best trial of each is retrained with seeds {', '.join(map(str, seeds))} and "
                   f"evaluated once on test.")
    md = ["# Equal-budget comparison", "", budget_line, "", f"## Test {metric}, tuned best and untuned (mean ± sd "
          f"over seeds)", "", "| method | trials | best dev | tuned test | untuned test | tuned − untuned | "
          "best values |", "|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {"budget": budget, "seeds": seeds, "sampler_seed": seed, "pruner": pruner,
                               "metric": metric, "methods": {}}
    per_seed = {m: _by_seed(rows[m]["tuned"], metric) for m in methods}
    for m in methods:
        r = rows[m]
        untuned = _by_seed(r["untuned"], metric)
        common = sorted(set(per_seed[m]) & set(untuned))
        gain = [per_seed[m][s] - untuned[s] for s in common]
        trials = ", ".join(f"{n} {s}" for s, n in sorted(r["trials"].items()))
        md.append(f"| {m} | {trials} | {r['best_dev']:.2f} | {_ms(list(per_seed[m].values()))} | "
                  f"{_ms(list(untuned.values()))} | {_ms(gain)} | {fmt_params(r['best_params'])} |")
        summary["methods"][m] = {**r, "tuned_test": per_seed[m], "untuned_test": untuned}
    base = methods[0]
    md += ["", f"## Tuned test {metric} per seed, paired against tuned {base}", "",
           "| seed | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in seeds:
        md.append(f"| {s} | " + " | ".join(f"{per_seed[m][s]:.2f}" if s in per_seed[m] else "—" for m in methods)
                  + " |")
    md += ["", f"## Paired differences against tuned {base} (test {metric}, by seed)", "",
           "| difference | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | better on |",
           "|---|" + "---|" * (len(seeds) + 2)]
    for m in methods[1:]:
        diff = {s: per_seed[m][s] - per_seed[base][s] for s in seeds if s in per_seed[m] and s in per_seed[base]}
        wins = sum(d > 0 for d in diff.values())
        md.append(f"| {m} − {base} | " + " | ".join(f"{diff[s]:+.2f}" if s in diff else "—" for s in seeds)
                  + f" | {np.mean(list(diff.values())) if diff else float('nan'):+.2f} | {wins} of {len(diff)} |")
    atomic_write_text(out / "compare.md", "\n".join(md) + "\n")
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=1, default=str))
    labels, run_dirs = {}, []
    for m in methods:
        for kind in ("tuned", "untuned"):
            for p in rows[m][kind]:
                labels[p] = f"{m} {kind}"
                run_dirs.append(p)
    report = write_report(run_dirs, out / "report", baseline=f"{base} tuned", labels=labels)
    headline = budget_line + "\n" + "\n".join(
        f"{m}: tuned test {metric} {_ms(list(per_seed[m].values()))}, untuned "
        f"{_ms(list(_by_seed(rows[m]['untuned'], metric).values()))}" for m in methods)
    return {"markdown": out / "compare.md", "json": out / "compare.json", "report": report, "headline": headline,
            "summary": summary}


__all__ = ["counted_trials", "run_compare", "write_compare"]
