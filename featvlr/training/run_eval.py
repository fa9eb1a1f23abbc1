"""A run's evaluations: the dev split after each epoch, the test split at the end.

Both go through the method's task (:func:`featvlr.tasks.evaluate_method`) with the options of
the run config (:meth:`featvlr.evaluation.options.EvalOptions.from_config`: the dev protocol, or
the test one with ``final``). :func:`dev_metrics` is what the trainer calls after each epoch
(eval mode, no gradients, the method's mode restored) and :func:`write_eval` what it calls on
the test split at the end (every configured scenario, a results JSON and plots).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from featvlr.config import Config
from featvlr.evaluation.options import EvalOptions
from featvlr.evaluation.results import write_results
from featvlr.tasks import evaluate_method

__all__ = ["dev_metrics", "write_eval"]


def dev_metrics(method, task, split, cfg: Config, device) -> dict[str, Any]:
    """Metrics of ``method`` on the selection split, by ``cfg.eval.dev_scenarios`` (rank 0 only)."""
    was_training = method.training
    method.eval()
    try:
        return evaluate_method(method, split, EvalOptions.from_config(cfg, final=False),
                               task.run_scenarios(cfg.eval.dev_scenarios), device)
    finally:
        method.train(was_training)


def write_eval(method, task, split, cfg: Config, device, path: str | Path, *,
               checkpoint: str | Path | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """Evaluate every configured scenario on ``split``; write the results JSON and plots at ``path``.

    ``warnings`` (the trainer's loss terms that never acted, :func:`featvlr.training.notes.inactive_terms`)
    are recorded with the results (``"warnings"``), with a collapse warning of this split's own geometry."""
    options = EvalOptions.from_config(cfg, final=True)
    curves: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    metrics = evaluate_method(method, split, options, task.run_scenarios(cfg.eval.scenarios), device, curves=curves,
                              submission_dir=Path(path).parent / "submission")
    from featvlr.config.provenance import config_hash
    from featvlr.evaluation.geometry import collapse_warning

    notes = list(warnings or [])
    collapsed = collapse_warning(metrics)
    notes += [f"on the {split.name} split {collapsed}"] if collapsed else []
    record = write_results(path, metrics, split=split.name, cfg=cfg, curves=curves, device=str(device),
                           seconds=time.perf_counter() - t0, checkpoint=checkpoint, config_sha256=config_hash(cfg),
                           extra={"warnings": notes} if notes else None)
    task.after_final_eval(method, split, options, device, Path(path).parent)
    return record
