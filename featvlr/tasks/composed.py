"""Composed retrieval (reference image + modifier text -> target image): composed batches and
the CIRR / FashionIQ / Shoes protocols; a FashionIQ split name may stand for its per-category
splits (``val`` for ``val_dress``, ``val_shirt``, ``val_toptee``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from featvlr.tasks.base import Task, register_task


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

    def evaluate(self, method: Any, split: Any, cfg: Any, scenarios: list[str] | None, device: Any, *,
                 final: bool = False, curves: dict | None = None, submission_dir: Path | None = None
                 ) -> dict[str, float]:
        from featvlr.evaluation.composed import evaluate_composed_method
        from featvlr.evaluation.options import EvalOptions, eval_options

        opts = eval_options(cfg, final=final)
        # scenarios chosen with EvalOptions (featvlr eval) are checked; a run config's lists
        # default to the cross-modal ones and are not
        chosen = scenarios if isinstance(cfg, EvalOptions) else None
        return evaluate_composed_method(method, split, dataset=opts.dataset, protocol=opts.composed_protocol,
                                        scenarios=chosen, batch_size=opts.batch_size, device=device,
                                        chunk_elements=opts.chunk_elements, submission_dir=submission_dir,
                                        curves=curves)


register_task(ComposedTask())
