"""Composed retrieval (reference image + modifier text -> target image): composed batches and
the CIRR / FashionIQ / Shoes protocols (:class:`~featvlr.evaluation.evaluators.ComposedEvaluator`);
a FashionIQ split name may stand for its per-category splits (``val`` for ``val_dress``,
``val_shirt``, ``val_toptee``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from featvlr.tasks.base import Task, register_task

if TYPE_CHECKING:
    from featvlr.evaluation.evaluators import ComposedEvaluator
    from featvlr.evaluation.options import EvalOptions


class ComposedTask(Task):
    name = "composed"

    def batches(self, split: Any, cfg: Any, *, placement: str | None, device: Any, **common: Any) -> Any:
        from featvlr.data.composed import ComposedBatches

        return ComposedBatches(split, **common)  # global vectors: small, read into RAM

    def has_split(self, store: Any, name: str) -> bool:
        names = store.splits()
        return name in names or any(n.startswith(name + "_") for n in names)

    def eval_split(self, store: Any, name: str) -> Any:
        from featvlr.cache.store import StoreSplit

        return StoreSplit(store, name)  # may name per-category splits only

    def evaluator(self, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                  device: Any = "cpu") -> ComposedEvaluator:
        from featvlr.evaluation.evaluators import ComposedEvaluator

        return ComposedEvaluator(split, options, scenarios, device)

    def run_scenarios(self, listed: Sequence[str]) -> list[str] | None:
        """None (the composed scenario): a run config's lists default to the cross-modal
        scenarios, and a composed run evaluates its one scenario whatever they name."""
        return None


register_task(ComposedTask())
