"""Tasks: what a method is trained and evaluated for (``cross_modal`` or ``composed``).

A task owns everything the trainer must not know about the data: how training batches are
built, which splits a run needs, what the dev split is, and which evaluator scores a model
(:meth:`~featvlr.tasks.base.Task.evaluator`). The trainer asks ``get_task(method_cls.task)``
and calls the :class:`~featvlr.tasks.base.Task` contract; it has no task branches and reads no
batch keys. :func:`evaluate_method` is the one way a method is evaluated: the trainer
(:mod:`featvlr.training.run_eval`) and ``featvlr eval`` (:mod:`featvlr.app.evaluate`) go through it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featvlr.core.errors import ConfigError
from featvlr.tasks.base import TASKS, Task, register_task

if TYPE_CHECKING:
    from featvlr.evaluation.options import EvalOptions


def get_task(name: str) -> Task:
    """The task called ``name`` (a method's ``task`` class attribute)."""
    if not TASKS:
        from featvlr.tasks import composed, cross_modal  # noqa: F401  (they register themselves)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]


def evaluate_method(method: Any, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                    device: Any = "cpu", *, curves: dict[str, list[float]] | None = None,
                    submission_dir: str | Path | None = None) -> dict[str, float]:
    """Flat metrics (``"i2t/R@1"``, ..., ``"rsum"``; ``"composed/..."``) of ``method`` on
    ``split`` by the evaluator of its task (``get_task(method.task).evaluator``) under
    ``options`` (a run config's: :meth:`EvalOptions.from_config`). ``scenarios``: None or
    ``"all"`` for every scenario the method and split allow; ``curves`` receives Recall@K
    curves; ``submission_dir`` the test-server files of a split without ground truth."""
    evaluator = get_task(method.task).evaluator(split, options, scenarios, device)
    return evaluator(method, curves=curves, submission_dir=submission_dir)


__all__ = ["Task", "evaluate_method", "get_task", "register_task"]
