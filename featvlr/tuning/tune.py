"""`featvlr tune`: an Optuna study over a config's hyper-parameters, each trial an ordinary run.

    featvlr tune --config configs/demo_vse.yaml --space train.lr=log:1e-4:3e-3 \\
        --space loss.margin=0.1:0.4 --trials 20 --out runs/tune_vse

TPE (seeded) proposes each trial's values; the trainer's per-epoch hook reports the dev
selection metric (``train.select_split`` / ``train.select_metric``) to the study and stops a
trial that the pruner (median by default, or successive halving) rules out. A trial's value
is its best dev metric, the one that chose its ``ckpt/best.pt``. Trials never look at the test
split: ``featvlr eval <trial> --split test`` or ``featvlr compare`` does that once, for the
configuration the study chose.

The study lives in ``<out>/study.db`` (SQLite) unless ``--storage`` names another Optuna RDB
URL. Running the same command again adds ``--trials`` more trials to the same study, alone or
beside other workers (several processes, or machines sharing a PostgreSQL study). Trial N
trains into ``<out>/trial_NNNN``; trial numbers come from the storage, so no two trials share
a folder, and a trial whose worker was killed is failed and re-queued as a new trial with a
new folder (:mod:`featvlr.tuning.storage`).
"""
from __future__ import annotations

import math
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from featvlr.config import load_config
from featvlr.core.errors import ConfigError, FeatvlrError, InputError, Interrupted
from featvlr.core.fileio import atomic_write_text
from featvlr.tuning.progress import fmt_params, fmt_seconds, named_progress, say
from featvlr.tuning.space import Dimension, config_space, format_value, parse_space
from featvlr.tuning.storage import DEFAULT_HEARTBEAT_S, default_url, masked, open_storage

PRUNERS = ("median", "halving", "none")


def make_pruner(name: str, *, startup: int = 4, warmup: int = 2):
    """Optuna's median pruner (after ``startup`` finished trials, from epoch ``warmup`` on),
    successive halving, or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {name!r}")


def open_study(url: str, name: str, *, sampler, pruner=None, identity: dict[str, Any] | None = None,
               heartbeat_s: float = DEFAULT_HEARTBEAT_S):
    """Create the study or load it; returns ``(study, created)``. ``identity`` is recorded on
    creation and must match on load (a study is never continued with another space or config)."""
    import optuna

    storage = open_storage(url, heartbeat_s=heartbeat_s)
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                    direction="maximize")
        created = True
        if identity is not None:
            study.set_user_attr("featvlr", identity)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        created = False
        recorded = study.user_attrs.get("featvlr")
        if identity is not None and recorded is not None:
            differ = [k for k in identity if k in recorded and recorded[k] != identity[k]]
            if differ:
                k = differ[0]
                raise ConfigError(
                    f"study {name!r} in {masked(url)} was started with another {k} "
                    f"({recorded[k]} vs {identity[k]} now); choose another --out or --study") from None
    return study, created


def worker_seed(seed: int, created: bool) -> int:
    """The worker that created the study samples with ``seed`` itself (a one-worker study is
    reproducible); the others get a seed of their own so that no two propose the same values."""
    if created:
        return seed
    import os

    return (seed * 1_000_003 + os.getpid() * 7919 + int(time.time() * 1000)) % (2 ** 31)


def trial_dir(out: Path, number: int) -> Path:
    return out / f"trial_{number:04d}"


def _check_folder(out: Path, study) -> None:
    """Trial folders without a study (its storage deleted or moved) would collide with new ones."""
    if study.trials:
        return
    stray = sorted(p.name for p in out.glob("trial_*") if p.is_dir())
    if stray:
        raise InputError(out, f"holds trial folders ({stray[0]}, ...) but the study has no trials: its storage was "
                         "replaced; choose another --out, or --storage for the study that made them")


def _objective(config: Path, dims: list[Dimension], base_overrides: list[str], out: Path, state: dict):
    import optuna

    from featvlr.training.trainer import train

    def objective(trial: "optuna.Trial") -> float:
        params = {d.key: d.suggest(trial) for d in dims}
        run_dir = trial_dir(out, trial.number)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        if run_dir.exists():
            raise InputError(run_dir, "exists already; a trial never reuses a run folder")
        cfg = load_config(config, base_overrides + [f"{k}={format_value(v)}" for k, v in params.items()])
        key = f"{cfg.train.select_split}/{cfg.train.select_metric}"

        def on_epoch_end(epoch: int, record: dict[str, Any]) -> bool:
            value = record.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return False
            trial.report(float(value), epoch)
            return trial.should_prune()

        try:
            with named_progress(run_dir.name):
                result = train(cfg, run_dir, on_epoch_end=on_epoch_end)
        except Interrupted as exc:  # let Optuna fail the trial, then stop as `train` does
            state["interrupted"] = exc
            raise KeyboardInterrupt from None
        except FeatvlrError as exc:  # a diverged run, say: the trial fails, the study goes on
            trial.set_user_attr("error", str(exc)[:500])
            raise
        value = result.best_metrics.get(cfg.train.select_metric)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        if result.stopped_early:
            if isinstance(value, (int, float)):
                trial.set_user_attr("best_value", float(value))
            raise optuna.TrialPruned(f"pruned after {result.epochs_run} epochs")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FeatvlrError(f"{run_dir}: no finite {key} (is train.eval_every 0?)")
        return float(value)

    return objective


def trial_line(study, trial, metric: str, done: int, total: int) -> str:
    """One stdout line for a finished trial: number, state, parameters, dev metric, best so far."""
    state = trial.state.name.lower()
    value = trial.value if trial.value is not None else trial.user_attrs.get("best_value")
    parts = [f"trial {trial.number} {state}" + (f" after epoch {trial.last_step}" if state == "pruned" else ""),
             fmt_params(trial.params)]
    if value is not None:
        parts.append(f"{metric} {value:.2f}")
    if state == "fail" and trial.user_attrs.get("error"):
        parts.append(trial.user_attrs["error"])
    try:
        best = study.best_trial
        parts.append(f"best {best.value:.2f} (trial {best.number})")
    except ValueError:
        parts.append("no complete trial yet")
    if trial.duration is not None:
        parts.append(fmt_seconds(trial.duration.total_seconds()))
    parts.append(f"{done}/{total} of this worker")
    return " · ".join(parts)


def run_tune(config: str | Path, space_items: list[str] | None, out: str | Path, *, trials: int,
             extra: list[str] | None = None, storage: str | None = None, study_name: str | None = None,
             seed: int = 0, pruner: str = "median", prune_startup: int = 4, prune_warmup: int = 2,
             heartbeat_s: float = DEFAULT_HEARTBEAT_S, progress: bool = False, report: bool = True,
             quiet: bool = False) -> dict[str, Any]:
    """Add ``trials`` trials to the study of ``out`` (see the module docstring); returns the
    study, its best trial, this worker's trials and the report paths."""
    import optuna

    config, out = Path(config), Path(out)
    extra = list(extra or [])
    if trials < 1:
        raise ConfigError(f"--trials: expected at least 1, got {trials}")
    cfg = load_config(config, extra)  # the fixed overrides, checked before anything runs
    items = list(space_items or []) or config_space(config)
    where = "--space" if space_items else f"{config}: tune.space"
    dims = parse_space(config, items, extra, where=where)
    pruner_obj = make_pruner(pruner, startup=prune_startup, warmup=prune_warmup)
    metric = f"{cfg.train.select_split} {cfg.train.select_metric}"
    identity = {"space": {d.key: d.spec for d in dims}, "method": cfg.method, "set": extra,
                "metric": metric, "kind": "tune"}
    url = storage or default_url(out)
    name = study_name or out.resolve().name
    study, created = open_study(url, name, sampler=None, pruner=pruner_obj, identity=identity,
                                heartbeat_s=heartbeat_s)
    study.sampler = optuna.samplers.TPESampler(seed=worker_seed(seed, created))
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(out, study)
    atomic_write_text(out / "tune.yaml", yaml.safe_dump({
        "kind": "tune", "config": str(config), "space": identity["space"], "set": extra, "metric": metric,
        "storage": url, "study": name, "seed": seed, "pruner": pruner, "prune_startup": prune_startup,
        "prune_warmup": prune_warmup}, sort_keys=False))
    from featvlr.app.train_files import maybe_build_demo

    maybe_build_demo(cfg)
    base = extra + [f"train.progress={str(progress).lower()}", "data.test_split="]
    state: dict[str, Any] = {}
    mine: list[int] = []

    def on_trial(study, trial) -> None:
        mine.append(trial.number)
        if not quiet:
            say(trial_line(study, trial, metric, len(mine), trials))

    if not quiet:
        say(f"study {name!r} in {masked(url)}: {len(study.trials)} trials so far; adding {trials} "
            f"({', '.join(d.key + '=' + d.spec for d in dims)}; {pruner} pruning on {metric})")
    try:
        study.optimize(_objective(config, dims, base, out, state), n_trials=trials, callbacks=[on_trial],
                       catch=(FeatvlrError,), gc_after_trial=False)
    except KeyboardInterrupt:
        if "interrupted" in state:
            exc = state["interrupted"]
            say("the stopped trial is left failed in the study; run the same command again to add new trials")
            raise exc from None
        raise
    return summarize(study, out, mine, metric, report=report)


def summarize(study, out: Path, mine: list[int], metric: str, *, report: bool = True) -> dict[str, Any]:
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    result: dict[str, Any] = {"study": study, "out": out, "trials": mine, "counts": counts, "metric": metric,
                              "best": None}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        result["best"] = {"number": best.number, "value": best.value, "params": dict(best.params),
                          "run_dir": best.user_attrs.get("run_dir")}
    if report and complete:
        from featvlr.tuning.study_report import write_study_report

        result["report"] = write_study_report(out, study=study)
    return result


__all__ = ["PRUNERS", "make_pruner", "open_study", "run_tune", "summarize", "trial_dir", "trial_line",
           "worker_seed"]
