"""Cross-modal retrieval (image <-> caption): caption batches, the scenarios of
:mod:`featvlr.evaluation.scenarios` by :class:`~featvlr.evaluation.evaluators.CrossModalEvaluator`,
per-query ranks for significance tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featvlr.tasks.base import Task, register_task

if TYPE_CHECKING:
    from featvlr.evaluation.evaluators import CrossModalEvaluator
    from featvlr.evaluation.options import EvalOptions


class CrossModalTask(Task):
    name = "cross_modal"

    def batches(self, split: Any, cfg: Any, *, placement: str | None, device: Any, **common: Any) -> Any:
        from featvlr.data import CaptionBatches

        return CaptionBatches(split, region_dropout=cfg.data.region_dropout, max_tokens=cfg.data.max_tokens,
                              token_dropout=cfg.data.token_dropout, token_replace=cfg.data.token_replace,
                              placement=placement, device=device, **common)

    def evaluator(self, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                  device: Any = "cpu") -> CrossModalEvaluator:
        from featvlr.evaluation.evaluators import CrossModalEvaluator

        return CrossModalEvaluator(split, options, scenarios, device)

    def after_final_eval(self, method: Any, split: Any, options: EvalOptions, device: Any, eval_dir: Path) -> None:
        if not method.pairwise:
            from featvlr.evaluation.methods import save_query_ranks

            save_query_ranks(method, split, options, device, Path(eval_dir) / f"{split.name}_ranks.npz")


register_task(CrossModalTask())
