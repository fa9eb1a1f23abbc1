"""Evaluators: a method's evaluation on one split, built once and called with each method.

As sentence-transformers' evaluators are (``SentenceEvaluator``): an evaluator is constructed
with its data (a cache split) and its options (:class:`~featvlr.evaluation.options.EvalOptions`:
the dev or test protocol, folds included; the scenarios; the device); calling it with a method
returns the flat metrics of :mod:`featvlr.evaluation.scenarios` (``"i2t/R@1"``, ..., ``"rsum"``;
``"composed/R@1"``, ...). ``primary_metric`` names the metric a run selects its checkpoint on
(the configs' ``train.select_metric``) and ``greater_is_better`` its direction.

A task builds the evaluator of its methods (:meth:`featvlr.tasks.base.Task.evaluator`); a run
config becomes options through :meth:`EvalOptions.from_config` alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.composed import composed_galleries, evaluate_composed_method, resolve_composed_protocol
from featvlr.evaluation.cross_modal import CrossModalScores, cross_modal_metrics
from featvlr.evaluation.embed import embed_split
from featvlr.evaluation.geometry import embedding_geometry
from featvlr.evaluation.methods import pairwise_score_fn
from featvlr.evaluation.options import CROSS_MODAL, EvalOptions, parse_scenarios


class Evaluator:
    """The evaluation of methods on ``split`` under ``options`` (an :class:`EvalOptions`, never a
    run config), for ``scenarios`` (None or ``"all"``: every one the method and split allow),
    embedding on ``device``."""

    greater_is_better: bool = True

    def __init__(self, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                 device: str | torch.device = "cpu"):
        if not isinstance(options, EvalOptions):
            raise TypeError(f"{type(self).__name__} takes EvalOptions (a run config's: EvalOptions.from_config"
                            f"(cfg, final=...)), not {type(options).__name__}")
        self.split = split
        self.options = options
        self.scenarios = parse_scenarios(scenarios)
        self.device = device

    @property
    def primary_metric(self) -> str:
        """The metric that ranks methods (and a run's epochs) on this evaluation."""
        raise NotImplementedError

    def __call__(self, method: Any, *, curves: dict[str, list[float]] | None = None,
                 submission_dir: str | Path | None = None) -> dict[str, float]:
        """Flat metrics of ``method`` on the split, without gradients (the method's mode is
        left as it is; its encoders run in eval mode). ``curves`` receives the Recall@K curves;
        ``submission_dir`` the test-server files of a split without ground truth (CIRR test1)."""
        with torch.no_grad():
            return self.compute(method, curves=curves,
                                submission_dir=None if submission_dir is None else Path(submission_dir))

    def compute(self, method: Any, *, curves: dict[str, list[float]] | None,
                submission_dir: Path | None) -> dict[str, float]:
        """The metrics of :meth:`__call__`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={getattr(self.split, 'name', self.split)!r}, "
                f"scenarios={self.scenarios or 'all'}, folds={self.options.folds})")


class CrossModalEvaluator(Evaluator):
    """i2t and t2i (and the uni-modal and mixed scenarios) of a cross-modal method, by the
    protocols of :mod:`featvlr.evaluation.scenarios`
    (:func:`~featvlr.evaluation.cross_modal.cross_modal_metrics`).

    A method's ``shortlist_plan(images, texts)`` (GLS) says how to rank: ``None`` scores every
    pair with ``method.score`` block by block when the method is ``pairwise``;
    ``{"images", "texts"}`` gives global embeddings, optionally with ``"shortlist"`` and
    ``"rerank_fn"`` for global shortlist then re-rank. Other pairwise methods go through
    ``method.score`` (i2t/t2i only). TERAN's NDCG is added when ``options.teran_ndcg`` and the
    split has a relevance matrix; global embeddings add their geometry
    (:mod:`featvlr.evaluation.geometry`) when ``options.geometry``.
    """

    def __init__(self, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(split, options, scenarios, device)
        if self.scenarios is not None and "composed" in self.scenarios:
            raise FeatvlrError("the composed scenario needs a composed method")

    @property
    def primary_metric(self) -> str:
        """``rsum`` (the sum of the i2t and t2i recalls) whenever both directions run; else the
        first scenario's first metric."""
        chosen = self.scenarios
        if chosen is None or all(d in chosen for d in CROSS_MODAL):
            return "rsum"
        if chosen[0] in CROSS_MODAL:
            return f"{chosen[0]}/R@{self.options.ks[0]}"
        return f"{chosen[0]}/ndcg_lin@{self.options.ndcg_ks[0]}"

    def compute(self, method: Any, *, curves: dict[str, list[float]] | None,
                submission_dir: Path | None) -> dict[str, float]:
        opts, split, chosen = self.options, self.split, self.scenarios
        images, texts = embed_split(method, split, batch_size=opts.batch_size, device=self.device,
                                    max_tokens=opts.max_tokens)
        opts = dataclasses.replace(opts, teran_ndcg=opts.teran_ndcg and bool(split.relevance_kinds()))
        plan = method.shortlist_plan(images, texts)
        if plan is not None:
            if plan.get("shortlist") is not None and chosen is None:
                chosen = list(CROSS_MODAL)
            scores = CrossModalScores(plan["images"], plan["texts"], rerank_fn=plan.get("rerank_fn"),
                                      shortlist=plan.get("shortlist"))
            return self._with_geometry(cross_modal_metrics(scores, split, chosen, opts, curves=curves),
                                       plan["images"], plan["texts"])
        if method.pairwise or isinstance(images, dict):
            scores = CrossModalScores(images, texts, score_fn=pairwise_score_fn(method, images, texts))
            return cross_modal_metrics(scores, split, chosen or list(CROSS_MODAL), opts, curves=curves)
        metrics = cross_modal_metrics(CrossModalScores(images, texts), split, chosen, opts, curves=curves)
        return self._with_geometry(metrics, images, texts)

    def _with_geometry(self, metrics: dict[str, float], images: Any, texts: Any) -> dict[str, float]:
        """Add the global embeddings' geometry (:mod:`featvlr.evaluation.geometry`) to ``metrics``."""
        if isinstance(images, torch.Tensor) and isinstance(texts, torch.Tensor) and self.options.geometry:
            metrics.update(embedding_geometry(images, texts, self.split.image_index(),
                                              block=self.options.geometry_block))
        return metrics


#: The metric each composed protocol's papers (and the configs' ``train.select_metric``) rank on.
COMPOSED_PRIMARY = {"cirr": "composed/arithmetic_mean", "fashioniq": "composed/average_recall",
                    "shoes": "composed/recall_mean"}


class ComposedEvaluator(Evaluator):
    """Composed image retrieval of a composed method, by the split's protocol
    (:func:`~featvlr.evaluation.composed.evaluate_composed_method`): the protocol of
    ``options.composed_protocol`` and ``options.dataset`` (CIRR, FashionIQ over its
    per-category splits, Shoes); on a CIRR split without targets the call writes the two
    test-server files to ``submission_dir`` and returns no metrics."""

    def __init__(self, split: Any, options: EvalOptions, scenarios: str | Sequence[str] | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(split, options, scenarios, device)
        if self.scenarios is not None and self.scenarios != ["composed"]:
            raise FeatvlrError(f"a composed method has only the composed scenario, not {', '.join(self.scenarios)}")
        self._protocol: str | None = None

    @property
    def protocol(self) -> str:
        """The resolved protocol (``cirr``, ``fashioniq`` or ``shoes``), as the evaluation resolves it."""
        if self._protocol is None:
            protocol = resolve_composed_protocol(self.options.composed_protocol, dataset=self.options.dataset)
            if protocol == "auto":
                galleries = composed_galleries(self.split.store, self.split.name, protocol)
                protocol = "fashioniq" if "" not in galleries else \
                    resolve_composed_protocol("auto", composed=self.split.composed())
            self._protocol = protocol
        return self._protocol

    @property
    def primary_metric(self) -> str:
        return COMPOSED_PRIMARY[self.protocol]

    def compute(self, method: Any, *, curves: dict[str, list[float]] | None,
                submission_dir: Path | None) -> dict[str, float]:
        o = self.options
        return evaluate_composed_method(method, self.split, dataset=o.dataset, protocol=o.composed_protocol,
                                        scenarios=self.scenarios, batch_size=o.batch_size, device=self.device,
                                        chunk_elements=o.chunk_elements, submission_dir=submission_dir,
                                        curves=curves)
