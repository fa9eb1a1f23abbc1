"""The grid of `featvlr ablate` as an Optuna study on the grid sampler.

Every planned run (grid cell x seed) is one point of a one-parameter grid, ``run``, whose
values are the run folders relative to the ablation folder (``loss.margin=0.1/seed0``), so
the study reads as the ablation does. Workers (processes, machines sharing ``--storage``)
loop: take the point the grid sampler proposes (or, for a run that is unfinished on disk but
already tried in the study, re-queue it), train it into its folder (resuming its
``ckpt/last.pt`` when there is one), and record the run's best dev metric. The folders stay
the truth: a finished run is skipped whatever the study says, and a run that another live
trial is training is left to it (the lower trial number trains; the other ends as a pruned
duplicate). A worker with nothing left waits for the runs others are training, failing the
ones whose worker died (no heartbeat for twice ``heartbeat_s``) and taking them over.
"""
from __future__ import annotations

import datetime
import math
import time
from pathlib import Path
from typing import Any, Callable

from featvlr.core.errors import FeatvlrError, Interrupted
from featvlr.tuning.progress import fmt_seconds, say

STUDY_NAME = "ablation"


def study_name(names: list[str]) -> str:
    """``ablation-<hash of the run list>``: a grid that changes (a seed added) is a new study in
    the same storage (Optuna fixes a parameter's choices per study); finished runs are skipped
    all the same."""
    import hashlib

    return f"{STUDY_NAME}-{hashlib.sha256(chr(10).join(names).encode()).hexdigest()[:10]}"


def _best_dev(run) -> float:
    from featvlr.core.checkpoint import load_checkpoint

    best = run.run_dir / "ckpt" / "best.pt"
    value = float(load_checkpoint(best).get("best_value", -math.inf)) if best.exists() else -math.inf
    return value if not math.isnan(value) else -math.inf


def work_on_grid(runs: list, out: Path, url: str, *, heartbeat_s: float,
                 run_one: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the grid's runs that no one else has; returns this worker's statuses."""
    import optuna
    from optuna.trial import TrialState

    from featvlr.tuning.tune import open_study

    out = Path(out)
    names = [r.run_dir.relative_to(out).as_posix() for r in runs]
    by_name = dict(zip(names, runs))
    sampler = optuna.samplers.GridSampler({"run": names}, seed=0)
    study, _ = open_study(url, study_name(names), sampler=sampler, heartbeat_s=heartbeat_s)
    finished = {n for n, r in by_name.items() if r.finished()}
    statuses: list[dict[str, Any]] = []
    metric = f"{runs[0].config.train.select_split} {runs[0].config.train.select_metric}"

    def name_of(t) -> str | None:
        if "run" in t.params:
            return t.params["run"]
        fixed = t.system_attrs.get("fixed_params") or {}
        if "run" in fixed:
            return fixed["run"]
        grid_id = t.system_attrs.get("grid_id")
        space = t.system_attrs.get("search_space") or {}
        if grid_id is not None and space.get("run") == names:
            return sampler._all_grids[grid_id][0]  # the grid sampler's own order of the same space
        return None

    def live(states=(TrialState.RUNNING,)) -> list:
        return study.get_trials(deepcopy=False, states=states)

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("run", names)
        run = by_name[name]
        trial.set_user_attr("run_dir", str(run.run_dir.resolve()))
        trial.set_user_attr("values", {k: v for k, v in run.values.items()} | {"seed": run.seed})
        if run.finished():
            finished.add(name)
            trial.set_user_attr("status", "skipped")
            return _best_dev(run)
        holder = min((t.number for t in live() if t.number != trial.number and name_of(t) == name), default=None)
        if holder is not None and holder < trial.number:
            trial.set_user_attr("duplicate_of", holder)
            raise optuna.TrialPruned(f"{name} is being trained by trial {holder}")
        t0 = time.perf_counter()
        try:
            status = run_one(run, label=f"{run.variant} seed{run.seed}")
        except Interrupted as exc:  # Optuna fails the trial; the command stops as `train` does
            stopped["exc"] = exc
            raise KeyboardInterrupt from None
        status["seconds"] = time.perf_counter() - t0
        statuses.append(status)
        trial.set_user_attr("status", status["status"])
        if status["status"] == "failed":
            given_up.add(name)
            trial.set_user_attr("error", status["error"][:500])
            raise FeatvlrError(status["error"])
        finished.add(name)
        return _best_dev(run)

    def on_trial(study, trial) -> None:
        name = trial.params.get("run")
        status = trial.user_attrs.get("status")
        if name is None or status in (None, "skipped") or "duplicate_of" in trial.user_attrs:
            return
        run = by_name[name]
        left = len(names) - len(finished)
        parts = [f"run {run.variant} seed {run.seed} {status}"]
        if trial.value is not None and math.isfinite(trial.value):
            parts.append(f"{metric} {trial.value:.2f}")
        if status == "failed":
            parts.append(trial.user_attrs.get("error", ""))
        if trial.duration is not None:
            parts.append(fmt_seconds(trial.duration.total_seconds()))
        parts += [f"{left} of {len(names)} left", str(run.run_dir)]
        say(" · ".join(parts))

    waiting_said = False
    given_up: set[str] = set()  # failed in this command (a diverged run): not retried until the next
    stopped: dict[str, Interrupted] = {}
    started = datetime.datetime.now()
    while True:
        finished |= {n for n in names if n not in finished and by_name[n].finished()}
        given_up |= {name_of(t) for t in live((TrialState.FAIL,)) if t.user_attrs.get("error")
                     and t.datetime_start is not None and t.datetime_start >= started}
        todo = [n for n in names if n not in finished and n not in given_up]
        if not todo:
            break
        optuna.storages.fail_stale_trials(study)
        running = {name_of(t) for t in live()}
        waiting = {name_of(t) for t in live((TrialState.WAITING,))}
        tried = {name_of(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        free = [n for n in todo if n not in running and n not in waiting]
        if not free and not waiting:
            if not waiting_said:
                say(f"waiting for {len(todo)} runs trained by other workers")
                waiting_said = True
            time.sleep(max(1.0, heartbeat_s / 2))
            continue
        if free and all(n in tried for n in free) and not waiting:
            study.enqueue_trial({"run": free[0]})  # tried before (stopped, failed or removed): again
        try:
            study.optimize(objective, n_trials=1, callbacks=[on_trial], catch=(FeatvlrError,), gc_after_trial=False)
        except KeyboardInterrupt:
            if "exc" in stopped:
                raise stopped["exc"] from None
            raise
    return statuses


__all__ = ["STUDY_NAME", "study_name", "work_on_grid"]
