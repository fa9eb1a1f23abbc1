"""A run's evaluations: the dev split after each epoch, the test split at the end.

:func:`evaluate_split` evaluates a method on a split through its task
(:func:`featvlr.tasks.get_task`; the dev protocol, or the test one with ``final``);
:func:`dev_metrics` is what the trainer calls after each epoch (eval mode, no gradients, the
method's mode restored) and :func:`write_eval` what it calls on the test split at the end
(every configured scenario, a results JSON and plots). The folds rule is
:func:`featvlr.evaluation.options.protocol_folds`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from featvlr.config import Config
from featvlr.evaluation.options import protocol_folds
from featvlr.evaluation.results import write_results

__all__ = ["dev_metrics", "evaluate_split", "protocol_folds", "write_eval"]


def evaluate_split(method, split, cfg: Config, scenarios: list[str] | None, device, *, final: bool = False,
                   curves: dict | None = None, submission_dir: Path | None = None) -> dict[str, float]:
    """Flat metrics (``"i2t/R@1"``, ..., ``"rsum"``) of ``method`` on ``split``, by its task."""
    from featvlr.tasks import get_task

    return get_task(method.task).evaluate(method, split, cfg, scenarios, device, final=final, curves=curves,
                                          submission_dir=submission_dir)


def dev_metrics(method, task, split, cfg: Config, device) -> dict[str, Any]:
    """Metrics of ``method`` on the selection split, by ``cfg.eval.dev_scenarios`` (rank 0 only)."""
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            return task.evaluate(method, split, cfg, cfg.eval.dev_scenarios, device)
    finally:
        method.train(was_training)


def write_eval(method, task, split, cfg: Config, device, path: str | Path, *,
               checkpoint: str | Path | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """Evaluate every configured scenario on ``split``; write the results JSON and plots at ``path``.

    ``warnings`` (the trainer's loss terms that never acted, :func:`featvlr.training.notes.inactive_terms`)
    are recorded with the results (``"warnings"``), with a collapse warning of this split's own geometry."""
    curves: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        metrics = task.evaluate(method, split, cfg, list(cfg.eval.scenarios), device, final=True, curves=curves,
                                submission_dir=Path(path).parent / "submission")
    from featvlr.evaluation.geometry import collapse_warning
    from featvlr.config.provenance import config_hash

    notes = list(warnings or [])
    collapsed = collapse_warning(metrics)
    notes += [f"on the {split.name} split {collapsed}"] if collapsed else []
    record = write_results(path, metrics, split=split.name, cfg=cfg, curves=curves, device=str(device),
                           seconds=time.perf_counter() - t0, checkpoint=checkpoint, config_sha256=config_hash(cfg),
                           extra={"warnings": notes} if notes else None)
    task.after_final_eval(method, split, cfg, device, Path(path).parent)
    return record
