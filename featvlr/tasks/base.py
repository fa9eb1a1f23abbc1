"""The task contract the trainer calls (see :mod:`featvlr.tasks`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from featvlr.core.errors import InputError

if TYPE_CHECKING:
    from featvlr.evaluation.evaluators import Evaluator
    from featvlr.evaluation.options import EvalOptions


class Task:
    """Batch building, split checks, dev split and the evaluator of one kind of retrieval."""

    name: ClassVar[str] = ""

    # -- training data ---------------------------------------------------------------------
    def build_batches(self, cfg: Any, split: Any, *, rank: int, world: int, placement: str | None = None,
                      device: Any = "cpu") -> Any:
        """The epoch-seeded dataset of training batches (:class:`featvlr.data.SeededBatches`);
        ``placement`` and ``device`` say where its rows live (:mod:`featvlr.data.rows`). A split
        too small for one batch is an :class:`InputError` naming the cache."""
        common = dict(batch_size=cfg.train.batch_size, seed=cfg.train.seed, rank=rank, world_size=world,
                      max_batches=cfg.train.max_steps_per_epoch)
        try:
            return self.batches(split, cfg, placement=placement, device=device, **common)
        except ValueError as exc:
            raise InputError(split.store.path, str(exc)) from None

    def batches(self, split: Any, cfg: Any, *, placement: str | None, device: Any, **common: Any) -> Any:
        """The task's batches class over ``split``; ``common`` holds the batch size, seed,
        rank share and step cap every task takes."""
        raise NotImplementedError

    # -- splits ------------------------------------------------------------------------------
    def has_split(self, store: Any, name: str) -> bool:
        """Whether ``name`` can be evaluated on ``store`` (a split of it, by default)."""
        return name in store.splits()

    def check_splits(self, store: Any, cfg: Any, select_split: str) -> None:
        """Fail before the first epoch (on every rank alike) when a split the run needs is missing."""
        needed = [("data.test_split", cfg.data.test_split)]
        if cfg.train.eval_every:
            needed.append(("train.select_split", select_split))
        for what, split in needed:
            if split and not self.has_split(store, split):
                raise InputError(store.path, f"{what}={split!r} is not a split of the cache "
                                 f"(it has: {', '.join(store.splits())})")

    def eval_split(self, store: Any, name: str) -> Any:
        """The split object evaluation of ``name`` takes."""
        return store.split(name)

    # -- evaluation --------------------------------------------------------------------------
    def evaluator(self, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                  device: Any = "cpu") -> Evaluator:
        """The evaluator of this task's methods on ``split`` (:mod:`featvlr.evaluation.evaluators`).

        ``options`` are :class:`~featvlr.evaluation.options.EvalOptions`: a run config's come
        from :meth:`EvalOptions.from_config` (``final``: the test protocol, every fold and
        TERAN's NDCG; else the cheap dev one). ``scenarios``: None or ``"all"`` for every
        scenario the method and split allow.
        """
        raise NotImplementedError

    def run_scenarios(self, listed: Sequence[str]) -> list[str] | None:
        """The scenarios to evaluate for a run config's list (``eval.scenarios`` or
        ``eval.dev_scenarios``): the list itself."""
        return list(listed)

    def after_final_eval(self, method: Any, split: Any, options: EvalOptions, device: Any, eval_dir: Path) -> None:
        """Extra files written beside the final results (per-query ranks, ...), under the test
        protocol's ``options``."""


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known to :func:`featvlr.tasks.get_task` under its name."""
    TASKS[task.name] = task
    return task
