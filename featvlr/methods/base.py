"""The method contract: a model plus a loss recipe that the trainer drives without knowing it.

A method is an ``nn.Module`` registered by name (:func:`featvlr.methods.register_method`)
and built by :func:`featvlr.methods.create_method`. It declares two option dataclasses,
``ModelOptions`` and ``LossOptions``; the config's ``model:`` and ``loss:`` sections are
validated against them, so ``--set loss.margin=0.1`` works for every method and a typo is an
error naming the closest key. Ranges and choices are declared on the fields
(:func:`featvlr.core.schema.number` / :func:`~featvlr.core.schema.choice`): they are checked when
a config loads and again, on the option objects, when a method is built; a method checks
only what the schema cannot say (one option against another, or against the feature sizes).

Batch keys: ``batch_keys`` names the keys of a training batch that ``training_step`` reads,
and :meth:`Method.required_batch_keys` adds those that options ask for; the module's call
(``forward``) checks them with :meth:`Method.check_batch` before every step, so a batch
without them is one error naming the keys, the method and where they come from.

Training: ``training_step(batch, state)`` returns a dict of named tensors. Keys ending in
``_loss`` are summed by the trainer into the loss it back-propagates; every other key is a
detached scalar that is only logged.

Evaluation (``task = "cross_modal"``): ``encode_images(batch)`` and ``encode_texts(batch)``
return ``[B, d]`` L2-normalised embeddings scored by dot product. A token-level method sets
``pairwise = True``: its encoders may return a dict of tensors (padded token features and
masks, concatenated along dim 0 by the evaluator) and ``score(images, texts)`` gives the
``[n_img, n_txt]`` block of scores of two such dicts. ``shortlist_plan(images, texts)``
chooses global search then local re-ranking (GLS).

Stages: ``stages(config, run_dir)`` declares prerequisite runs (GLS's stage 1, RVLR's
teacher) that the trainer trains, resumes or reuses first; ``prepare(config, run_dir,
load_run)`` then resolves the config to point at them, and ``attach_runs(load_run)`` takes
what the built method needs from other runs (weights, a frozen reference). ``load_run``
(:data:`LoadRun`) is handed down by the trainer: methods never import the trainer, the
registry or the configs, and never load a run by themselves.

The task (``cross_modal`` or ``composed``, :mod:`featvlr.tasks`) builds the batches, checks
the splits and runs the evaluation; ``ddp_options()`` gives the method's
``DistributedDataParallel`` arguments.

Evaluation (``task = "composed"``): ``encode_queries(batch)`` embeds (reference, modifier)
queries and ``encode_images(batch)`` the gallery.

Cross-modal batches (built by :mod:`featvlr.data.captions`: float32 on the training device),
one item per caption in training:

================  ===================  ====================================================
key               shape / dtype        meaning
================  ===================  ====================================================
regions           [B, R, D] float      region features, valid ones first, zero padded
region_mask       [B, R] bool          True on valid regions
region_lengths    [B] long             number of valid regions
tokens            [B, L, Dt] float     token features, zero padded
token_mask        [B, L] bool          True on valid tokens
token_lengths     [B] long             number of valid tokens
pooled_text       [B, Dt] float        pooled sentence embedding of the caption
global_image      [B, Dg] float        global image vector (only if the cache has one)
image_ids         [B] long             image row in the split (positives share it)
text_ids          [B] long             caption row in the split
================  ===================  ====================================================

Image-only batches (``encode_images``) carry the image keys, text-only batches the text keys.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from featvlr.core.errors import ConfigError
from featvlr.core.schema import check_fields

IMAGE_KEYS = ("regions", "region_mask", "region_lengths", "global_image")
TEXT_KEYS = ("tokens", "token_mask", "token_lengths", "pooled_text")
# Where a batch key comes from, for the error of a batch that lacks it.
KEY_SOURCES = {
    "regions": "images/<split>/regions", "region_mask": "images/<split>/regions",
    "tokens": "texts/<split>/tokens: this cache holds pooled text vectors only (extract with a "
              "sentence-transformers or BERT text model to get token features)",
    "token_mask": "texts/<split>/tokens", "pooled_text": "texts/<split>/pooled",
    "global_image": "images/<split>/global", "reference_aug": "images/<split>/global_aug",
}


@dataclass
class FeatureDims:
    """Feature sizes of the cache a method is built for."""

    region_dim: int = 0
    n_regions: int = 0
    text_dim: int = 0
    global_dim: int = 0


@dataclass
class StepState:
    """Where the trainer is; methods use it for warm-ups (epochs or iterations)."""

    epoch: int = 0
    step: int = 0  # global optimiser step, counted from 0
    steps_per_epoch: int = 1
    world_size: int = 1


LoadRun = Callable[..., "tuple[Method, Any]"]
"""``load_run(path, device="cpu", which="best") -> (method, config)``: another run's method,
rebuilt from its folder or checkpoint in eval mode (:func:`featvlr.inference.loading.load_method`,
handed down by the trainer: methods do not import the registry that lists them)."""


@dataclass
class Stage:
    """A prerequisite run a method declares (GLS's stage 1, RVLR's teacher): the trainer
    trains it into ``run_dir`` with ``config`` before the method's own run, resumes it when
    it was interrupted, and reuses it when it is complete."""

    name: str
    config: Any
    run_dir: Any


@dataclass
class NoOptions:
    """Options dataclass for a method section that takes none."""


class Method(nn.Module):
    """Base class of every method; see the module docstring for the contract."""

    name: ClassVar[str] = "base"
    task: ClassVar[str] = "cross_modal"  # or "composed"
    pairwise: ClassVar[bool] = False
    ModelOptions: ClassVar[type] = NoOptions
    LossOptions: ClassVar[type] = NoOptions
    batch_keys: ClassVar[tuple[str, ...]] = ()
    """Keys of a training batch that ``training_step`` reads whatever the options."""

    def __init__(self, model: Any, loss: Any, dims: FeatureDims):
        super().__init__()
        check_fields(model, "model", ConfigError)  # the schema's ranges and choices, on the objects
        check_fields(loss, "loss", ConfigError)
        self.model_opts = model
        self.loss_opts = loss
        self.dims = dims

    # -- training ------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, torch.Tensor]:
        """The trainer calls the module (so DistributedDataParallel sees the forward); the
        batch's keys are checked (:meth:`check_batch`), then :meth:`training_step` runs."""
        self.check_batch(batch)
        return self.training_step(batch, state)

    def required_batch_keys(self) -> dict[str, str]:
        """``{key: why}`` for every key a training batch must hold: :attr:`batch_keys`, and the
        keys that options ask for (a method overrides this to add them, e.g.
        ``{"global_image": "loss.image_feature=global"}``)."""
        return {key: f"method {self.name!r}" for key in self.batch_keys}

    def check_batch(self, batch: dict[str, Any], keys: Iterable[str] | None = None) -> None:
        """Raise :class:`~featvlr.core.errors.ConfigError` naming the required keys
        (:meth:`required_batch_keys`; only those among ``keys`` when given, e.g.
        :data:`TEXT_KEYS` for a text-only batch) that ``batch`` lacks."""
        wanted = self.required_batch_keys()
        if keys is not None:
            wanted = {k: why for k, why in wanted.items() if k in set(keys)}
        missing = [k for k in wanted if k not in batch]
        if missing:
            parts = [f"{k} (needed by {wanted[k]}; from {KEY_SOURCES.get(k, 'the batches of the task')})"
                     for k in missing]
            raise ConfigError(f"the batches lack {', '.join(parts)}")

    def training_step(self, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups; by default no weight decay on biases and norm weights.

        Methods with per-module learning rates (the papers use them) override this and set
        ``lr`` per group.
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                  {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def optimizer_groups(self, lr: float, weight_decay: float, *, decay_all: bool = False) -> list[dict]:
        """:meth:`param_groups`, with ``decay_all`` (``train.decay_all_parameters``) setting
        ``weight_decay`` on every group, biases and norms included, as vse_infty's AdamW does;
        per-group learning rates are kept."""
        groups = self.param_groups(lr, weight_decay)
        if decay_all:
            groups = [{**g, "weight_decay": weight_decay} for g in groups]
        return groups

    def ddp_options(self) -> dict[str, Any]:
        """Keyword arguments of ``DistributedDataParallel`` for this method. By default unused
        parameters are searched for (stage-dependent heads, warm-up phases)."""
        return {"find_unused_parameters": True}

    @classmethod
    def stages(cls, config: Any, run_dir: Any) -> list[Stage]:
        """The prerequisite runs of ``config`` in ``run_dir``, in order (none by default)."""
        return []

    @classmethod
    def prepare(cls, config: Any, run_dir: Any, load_run: LoadRun | None = None) -> Any:
        """Run after :meth:`stages` are complete, before training: return the config resolved
        to point at them (a stage's run folder, cached teacher features). Never trains.
        ``load_run`` rebuilds another run's method (:data:`LoadRun`)."""
        return config

    def attach_runs(self, load_run: LoadRun) -> None:
        """Take what this method needs from other runs (GLS's stage 1, CoVLR's reference) through
        ``load_run``; the trainer calls it once the method is built, before its own checkpoint is
        restored. Nothing by default."""

    # -- evaluation ----------------------------------------------------------------------
    def encode_images(self, batch: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def encode_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, images: Any, texts: Any) -> torch.Tensor:
        """``[n_img, n_txt]`` scores of two blocks of encoder outputs (pairwise methods)."""
        return images @ texts.t()

    def shortlist_plan(self, images: Any, texts: Any) -> dict[str, Any] | None:
        """How the evaluator ranks the encoders' outputs of a whole split (``None`` by default:
        dot products of global embeddings, or :meth:`score` block by block when ``pairwise``).

        A method with a cheap global score and an expensive local one (GLS) returns
        ``{"images": [N, d], "texts": [T, d]}`` global embeddings, optionally with
        ``"shortlist": (k_i2t, k_t2i)`` and ``"rerank_fn"``: every query's top-k by the global
        score is re-scored by ``rerank_fn(queries, candidates, queries=...)`` and re-ranked.
        """
        return None
