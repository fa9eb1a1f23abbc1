"""Cross-modal retrieval (image <-> caption): caption batches, the scenarios of
:mod:`featvlr.evaluation.scenarios`, per-query ranks for significance tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from featvlr.tasks.base import Task, register_task


class CrossModalTask(Task):
    name = "cross_modal"

    def batches(self, split: Any, cfg: Any, *, placement: str | None, device: Any, **common: Any) -> Any:
        from featvlr.data import CaptionBatches

        return CaptionBatches(split, region_dropout=cfg.data.region_dropout, max_tokens=cfg.data.max_tokens,
                              token_dropout=cfg.data.token_dropout, token_replace=cfg.data.token_replace,
                              placement=placement, device=device, **common)

    def evaluate(self, method: Any, split: Any, cfg: Any, scenarios: list[str] | None, device: Any, *,
                 final: bool = False, curves: dict | None = None, submission_dir: Path | None = None
                 ) -> dict[str, float]:
        from featvlr.evaluation.methods import evaluate_cross_modal_method
        from featvlr.evaluation.options import eval_options

        return evaluate_cross_modal_method(method, split, scenarios, eval_options(cfg, final=final), device=device,
                                           curves=curves)

    def after_final_eval(self, method: Any, split: Any, cfg: Any, device: Any, eval_dir: Path) -> None:
        if not method.pairwise:
            from featvlr.evaluation.methods import save_query_ranks
            from featvlr.evaluation.options import eval_options

            save_query_ranks(method, split, eval_options(cfg, final=True), device,
                             Path(eval_dir) / f"{split.name}_ranks.npz")


register_task(CrossModalTask())
