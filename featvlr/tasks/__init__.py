"""Tasks: what a method is trained and evaluated for (``cross_modal`` or ``composed``).

A task owns everything the trainer must not know about the data: how training batches are
built, which splits a run needs, what the dev split is, and how a model is evaluated. The
trainer asks ``get_task(method_cls.task)`` and calls the :class:`~featvlr.tasks.base.Task`
contract; it has no task branches and reads no batch keys.
"""
from __future__ import annotations

from featvlr.core.errors import ConfigError
from featvlr.tasks.base import TASKS, Task, register_task


def get_task(name: str) -> Task:
    """The task called ``name`` (a method's ``task`` class attribute)."""
    if not TASKS:
        from featvlr.tasks import composed, cross_modal  # noqa: F401  (they register themselves)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]


__all__ = ["Task", "get_task", "register_task"]
