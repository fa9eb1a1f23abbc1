"""``rvlr``: rebalanced retrieval with representation-level and structure-aware distillation.

Yang et al., "Rebalanced Vision-Language Retrieval Considering Structure-Aware Distillation",
IEEE TIP 2024 (code: njustkmg/TIP24-Rebalanced_Vision_Language_Retrieval).

Student: the VSE-infinity dual encoder of :mod:`featvlr.methods.vse` (same heads, same
test-time encoders). Teachers, frozen (:mod:`featvlr.methods.teachers`): by default
(``model.teacher: features``) the paper's modality-specific ones, from the cache, for the
*training* rows of the batch: the pooled sentence vectors for text (the text encoder's
sentence embedding, all-MiniLM-L6-v2 by default, trained on a large corpus of sentence pairs
for semantic similarity) and an image-only feature (mean of the valid regions, or the
cache's global vector such as CLIP's ``image_embeds``) for images. They should know more
about each modality's neighbourhoods than the student because they were trained on far more
data for exactly that, where the student's towers learn only what ranking the other modality
asks of them; the run is one stage with the student trained from scratch. Never a relevance
matrix: ROUGE-L / SPICE relevance exists only for evaluation splits and only evaluation reads
it. On frozen features this knowledge is already in the student's input: the pooled sentence
vector *is* the mean of the cached token features the text tower reads (cosine 1.0000 on the
demo cache), and the region mean is the mean of the regions the image tower reads. The
teachers can keep the heads from discarding the input's intra-modal structure; they cannot
add information the student lacks, unlike the paper's, whose student backbones are fine-tuned
away from their pre-trained state (a cache's ``global`` vector from another backbone is the
nearest featvlr has to an independent teacher). ``model.teacher: base`` runs a two-stage
recipe in one command: :meth:`RVLR.prepare` first
trains the base ``vse`` run as ``<run_dir>/teacher`` and distils from its (joint, cross-modal)
embeddings, the student starting from its weights (twice the epochs of a ``vse`` run);
``model.teacher: runs/NAME`` uses the embeddings of an earlier featvlr run. A run teacher's
embeddings are computed once over the training split and cached beside the feature cache.

Loss, on the global batch (all ranks gathered)::

    L = w_itc * L_cm                       base cross-modal loss (vse's hinge, or ITC with soft ids)
      + w_iic * L_iic + w_ttc * L_ttc      representation distillation, per modality
      + w_kd  * L_kd                       fused-head relations vs lambda * T + (1 - lambda) * I
      (+ w_kdi * L_kdi + w_kdt * L_kdt     the two teacher-mixture terms, loss.mixture: train)

with the paper's weights 1, 1, 2, 2, 1, 1 (its ``a..g`` minus ``b = 2`` for ITM).

Differences from the paper's code:

- **No ITM term.** The paper's ``2 * L_itm`` trains a cross-attention fusion encoder on
  hard negatives; featvlr's heads are a dual encoder over frozen features with no fusion
  encoder, so the term (and ITM re-ranking at test time) is dropped.
- **F is the relation matrix of an own fused head** (``loss.structure_space: fused``,
  default). The paper relates the fusion encoder's [CLS] of each positive pair, a space
  apart from the ITC embeddings that rank. Without a fusion encoder, featvlr's analogue is a
  two-layer head over the pair's concatenated image and text embeddings; the structure term
  reaches the towers only through it. ``embeddings`` relates the retrieval embeddings
  themselves (``loss.relation``: text, image or both), featvlr's earlier choice.
- **Relations compared per-row standardised** (``loss.structure_relations: standardized``,
  default; ``absolute`` is the paper's). The absolute MAE pulls every student cosine toward
  the mixture's value: on the retrieval embeddings it fixed the student's mean intra-modal
  cosine at the teacher mixture's (0.40 +- 0.08 for the cached MiniLM / mean-region teachers;
  every such run ended at 0.39-0.46), which let images crowd captions out of a mixed gallery.
  Standardised rows keep which neighbours a row has and their relative spacing, not the row's
  mean or spread (a tighter or wider cone costs nothing; ``tau2`` cancels out). The logged
  ``image_cosine``, ``text_cosine`` (the student's retrieval embeddings) and
  ``teacher_cosine`` (the mixture) show where the geometry goes.
- **lambda = sigmoid(logit)**, so it stays in (0, 1); the paper's is unconstrained.
- **tau2 fixed** (0.07) by default; the paper's learnable, unclamped tau2 lets every
  structure term shrink by growing. ``loss.learnable_structure_temperature`` brings a
  clamped learnable one back.
- **Own temperature for L_iic / L_ttc** (learnable, clamped), not the ITC one, so the
  distillation terms work with the hinge base loss too.
- **Wasserstein option**: row-wise 1-D Wasserstein between the off-diagonal relation values
  of the student and the mixture, for all three terms; the paper's ``wd`` path adds learned
  MLP projections of the teacher features and a weighting by student text distances, and
  zeroes the two mixture terms. Its ``kl`` option (an L1 between cumulative sums) is not
  offered.
- **Mixture terms logged, not trained** (``loss.mixture: log``, the default). With MAE,
  ``L_kdi + L_kdt = (|lambda| + |1 - lambda|) mean|I - T|``: in the paper (lambda
  unconstrained) its only effect is to keep lambda in [0, 1], which the sigmoid does here, so
  the sum is a constant with no gradient. They are returned as the diagnostics
  ``image_mixture`` and ``text_mixture``; ``loss.mixture: train`` adds them as losses (with
  ``mse`` or ``wd`` they then pull lambda toward 1/2).
- **Base loss.** vse's hinge by default (featvlr's baseline); the paper's X-VLM ITC is
  ``loss.kind: infonce``. The paper's terms are all means, next to a mean ITC at tau 0.07;
  the hinge sums both directions over the batch in cosine units, so with it
  ``loss.reduction: auto`` multiplies the distillation terms by ``2 * B * tau``, ``tau`` the
  *learned* distillation temperature of the step (:func:`distill_scale`), which keeps the
  paper's distillation-to-base gradient ratio
  (``benchmarks/experiments/rvlr_balance.py`` prints it; ``sum``, x B, made them 6-12x the hinge).
- **Two stages (``model.teacher: base``), one train section.** Stage 1 and stage 2 use the
  config's ``train`` section; the student starts from the stage-1 weights
  (``model.init_from_teacher``) as the paper's stage 2 loads its stage-1 checkpoint, and
  then skips the hinge's sum-over-negatives warm-up (the base had it).
- **Checkpoint selection on the dev split** (the paper selects on test), fixed seeds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.core import distributed as dist_utils
from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.errors import ConfigError
from featvlr.core.schema import choice, number
from featvlr.losses import SoftIdInfoNCE
from featvlr.losses.distill import DISTANCES, RELATION_FORMS, RepresentationDistillation, StructureDistillation
from featvlr.losses.structure import off_diagonal
from featvlr.methods.base import FeatureDims, LoadRun, Method, Stage, StepState
from featvlr.methods.encoders import TowerEncoders
from featvlr.methods.registry import register_method
from featvlr.methods.teachers import IMAGE_SOURCES, TeacherTable, features_teacher, load_teacher_cache
from featvlr.methods.vse import (
    VSE,
    VSEEncoders,
    VSELossOptions,
    VSEModelOptions,
    build_cross_modal_loss,
    cross_modal_loss,
)
from featvlr.modules import xavier_linear
from featvlr.modules.precision import fp32_normalize, fp32_scores

RELATIONS = ("text", "image", "both")
# Where the structure term's student relations live: "fused" (an own head over each positive
# pair's image and text embeddings, the analogue of the paper's fused [CLS]) or "embeddings"
# (the retrieval embeddings themselves, chosen by loss.relation).
STRUCTURE_SPACES = ("fused", "embeddings")
BASE_TEACHER = "base"  # model.teacher value of the two-stage recipe


@dataclass
class RVLRModelOptions(VSEModelOptions):
    # "features" (the paper's uni-modal teachers from the cache: the frozen sentence vectors
    # and an image-only feature), "base" (two stages: train the vse base as
    # <run_dir>/teacher, then distil from its joint space), or a run folder / .pt of an earlier run.
    teacher: str = "features"
    # Which checkpoint of a teacher run: "best" or "last".
    teacher_checkpoint: str = choice("best", "best", "last")
    # Image teacher of `features`: "regions" (mean of the valid regions) or "global".
    teacher_image: str = choice("regions", *IMAGE_SOURCES)
    # Start the student from the teacher run's encoder weights (the paper's stage 2 loads
    # the stage-1 checkpoint); needs a teacher run with the same encoders.
    init_from_teacher: bool = True
    # Filled in by the prepare step: the teacher cache file and its embedding size.
    teacher_cache: str = ""
    teacher_dim: int = number(0, min=0)


@dataclass
class RVLRLossOptions(VSELossOptions):
    # The base cross-modal loss is vse's (``kind``: "hinge" by default, or "infonce", the
    # paper's ITC with soft image ids); the two-stage recipe trains its base with it too.
    # Reduction of the distillation terms over the batch: "mean" (the paper's, next to its
    # mean ITC), "sum" (x global batch size B), or "auto" (mean with InfoNCE; with the hinge,
    # x 2 * B * distill_temperature, which keeps the paper's gradient balance: see distill_scale).
    reduction: str = choice("auto", "auto", "mean", "sum")
    # Weights (the paper's a, c, d, e, f, g = 1, 1, 2, 2, 1, 1; its ITM weight b has no term here).
    contrastive_weight: float = number(1.0, min=0)
    image_distill_weight: float = number(1.0, min=0)
    text_distill_weight: float = number(2.0, min=0)
    structure_weight: float = number(2.0, min=0)
    image_mixture_weight: float = number(1.0, min=0)
    text_mixture_weight: float = number(1.0, min=0)
    # The mixture terms |I - E| and |T - E|: "log" (diagnostics ``image_mixture`` and
    # ``text_mixture``, not summed into the loss) or "train" (weighted ``*_mixture_loss``
    # terms). With MAE they sum to mean|I - T| whatever lambda in (0, 1): no gradient reaches
    # any parameter, so "train" only changes the logged total; with "mse" or "wd" they pull
    # lambda toward 1/2, and with a learnable tau2 they grow it.
    mixture: str = choice("log", "log", "train")
    # Representation distillation temperature (own, learnable, clamped to [0.01, 0.5]).
    distill_temperature: float = number(0.07, above=0)
    learnable_distill_temperature: bool = True
    # Structure distillation: student relation ("text", "image", "both"), distance
    # ("mae", "mse", "wd"), relation temperature tau2, lambda.
    relation: str = choice("both", *RELATIONS)
    # The student relations' space: "fused" (own head over the positive pair, a space apart
    # from the ranking space, as the paper's fused [CLS]) or "embeddings" (the retrieval
    # embeddings, by loss.relation). And how rows are compared: "standardized" (per-row
    # mean 0, unit std: invariant to a row's offset and scale) or "absolute" (the paper's).
    structure_space: str = choice("fused", *STRUCTURE_SPACES)
    structure_relations: str = choice("standardized", *RELATION_FORMS)
    distance: str = choice("mae", *DISTANCES)
    structure_temperature: float = number(0.07, above=0)
    learnable_structure_temperature: bool = False
    structure_temperature_max: float = number(1.0, above=0)
    init_lambda: float = number(0.5, above=0, below=1)
    learnable_lambda: bool = True


def _check_teacher(model: RVLRModelOptions) -> None:
    """``model.teacher`` names a teacher (the schema has no rule for a free string)."""
    if not model.teacher:
        raise ConfigError("model.teacher: empty; use features (uni-modal teachers from the cache), base (train "
                          "the vse base first and distil from it) or the folder of an earlier run")


def distill_scale(loss: RVLRLossOptions, batch: int, *, hinge: bool, temperature: float | None = None) -> float:
    """The factor on the (mean-reduced) distillation terms for ``loss.reduction`` and a global
    batch of ``batch`` rows.

    ``mean``: 1 (the paper's, next to its mean ITC). ``sum``: ``batch``. ``auto``: 1 with
    InfoNCE; with the hinge, ``2 * batch * tau``, ``tau`` the representation-distillation
    temperature as it is now (``temperature``: the learned value, which drifts from the
    configured ``loss.distill_temperature``; that value when not given). The hinge sums both
    directions over the batch in cosine units, where the paper's ITC averages them in units of
    ``1 / tau``; the distillation terms are mean cross-entropies over cosines / tau (and MAE
    over relations / tau2), so this factor puts them in the hinge's units and keeps the
    paper's distillation-to-base gradient ratio (about 1-2x, benchmarks/experiments/rvlr_balance.py).
    """
    if loss.reduction == "mean":
        return 1.0
    if loss.reduction == "sum":
        return float(batch)
    tau = loss.distill_temperature if temperature is None else float(temperature)
    return 2.0 * batch * tau if hinge else 1.0


def base_config(config: Any) -> Any:
    """The stage-1 config: the same data, training and evaluation sections, method ``vse``
    with the student's encoder options and base-loss options."""
    model = VSEModelOptions(**{f.name: getattr(config.model, f.name) for f in dataclasses.fields(VSEModelOptions)})
    loss = VSELossOptions(**{f.name: getattr(config.loss, f.name) for f in dataclasses.fields(VSELossOptions)})
    name = f"{config.name or 'rvlr'}_teacher"
    return dataclasses.replace(config, method="vse", name=name, model=model, loss=loss)


@register_method("rvlr")
class RVLR(TowerEncoders, Method):
    """RVLR on frozen features (see the module docstring).

    Input: the cross-modal training batch (``regions``, ``tokens``, ``pooled_text``,
    ``image_ids``, ``text_ids``, ...). ``training_step`` returns ``contrastive_loss``,
    ``image_distill_loss``, ``text_distill_loss``, ``structure_loss`` (already weighted),
    the mixture diagnostics ``image_mixture`` and ``text_mixture`` (or, with
    ``loss.mixture: train``, ``image_mixture_loss`` and ``text_mixture_loss``), and logs
    ``lambda`` and the temperatures. At test time it is the plain dual encoder: ``encode_images`` and
    ``encode_texts`` give L2-normalised ``[B, embed_dim]`` vectors.
    """

    ModelOptions = RVLRModelOptions
    LossOptions = RVLRLossOptions
    batch_keys = VSE.batch_keys

    def required_batch_keys(self) -> dict[str, str]:
        """``vse``'s keys and the teacher's: cached features, or the rows of a run teacher's table."""
        keys, opts = super().required_batch_keys(), self.model_opts
        if opts.teacher != "features":
            keys["text_ids"] = "model.teacher (a run)"
        else:
            keys["pooled_text"] = "model.teacher=features"
            if opts.teacher_image == "global":
                keys["global_image"] = "model.teacher_image=global"
        return keys

    def __init__(self, model: RVLRModelOptions, loss: RVLRLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        _check_teacher(model)
        self.encoders = VSEEncoders(model, dims)
        self.criterion = build_cross_modal_loss(loss)
        if model.teacher == "features":
            image_dim = dims.region_dim if model.teacher_image == "regions" else dims.global_dim
            text_dim = dims.text_dim
        else:
            image_dim = text_dim = model.teacher_dim
        if image_dim <= 0 and model.teacher == "features":
            raise ConfigError("model.teacher_image=global: the cache has no global image vectors "
                              "(images/<split>/global)", key="model.teacher_image")
        if image_dim <= 0 or text_dim <= 0:
            raise ConfigError("rvlr: the teacher's feature size is unknown; a teacher run is resolved by the "
                              "prepare step (featvlr.training.trainer.train runs it), or set model.teacher=features")
        # Learned projections of the frozen teacher features (the paper's sig_*_proj).
        self.teacher_image_proj = xavier_linear(image_dim, model.embed_dim)
        self.teacher_text_proj = xavier_linear(text_dim, model.embed_dim)
        self.representation = RepresentationDistillation(
            temperature=loss.distill_temperature, learnable=loss.learnable_distill_temperature)
        self.structure = StructureDistillation(
            distance=loss.distance, temperature=loss.structure_temperature,
            learnable_temperature=loss.learnable_structure_temperature, tau_max=loss.structure_temperature_max,
            init_lambda=loss.init_lambda, learnable_lambda=loss.learnable_lambda, form=loss.structure_relations)
        # The fused head: a positive pair's image and text embeddings -> one vector whose
        # relations the structure term shapes (the paper relates the fusion encoder's [CLS]).
        d = model.embed_dim
        self.fusion = (nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d))
                       if loss.structure_space == "fused" else None)
        self._table: TeacherTable | None = None
        self.starts_from_teacher = model.teacher != "features" and model.init_from_teacher

    # -- preparation ---------------------------------------------------------------------
    @classmethod
    def stages(cls, config: Any, run_dir: Any) -> list[Stage]:
        """With ``model.teacher: base``, the stage-1 ``vse`` run is trained into ``<run_dir>/teacher``."""
        if config.model.teacher != BASE_TEACHER:  # "features", or a run folder
            return []
        return [Stage("teacher", base_config(config), Path(run_dir) / "teacher")]

    @classmethod
    def prepare(cls, config: Any, run_dir: Any, load_run: LoadRun | None = None) -> Any:
        """Resolve a run teacher (``base``: the stage-1 run; or a named run): compute (or reuse)
        its cached embeddings over the training split and record where they are."""
        from featvlr.core.checkpoint import resolve_checkpoint
        from featvlr.methods.teachers import ensure_teacher_cache, teacher_cache_path, teacher_dim

        model = config.model
        _check_teacher(model)
        if model.teacher == "features":
            return config
        teacher = str(Path(run_dir) / "teacher") if model.teacher == BASE_TEACHER else model.teacher
        ckpt = resolve_checkpoint(teacher, model.teacher_checkpoint)
        if dist_utils.is_main():
            ensure_teacher_cache(ckpt, config.data.cache, config.data.train_split, load_run,
                                 device=config.train.device, batch_size=config.eval.batch_size)
        dist_utils.barrier()
        path = teacher_cache_path(ckpt, config.data.cache, config.data.train_split)
        model = dataclasses.replace(model, teacher=teacher, teacher_cache=str(path), teacher_dim=teacher_dim(path))
        return dataclasses.replace(config, model=model)

    def attach_runs(self, load_run: LoadRun) -> None:
        """With ``model.init_from_teacher``, the student starts from the teacher run's encoders
        (before a ``--resume`` restores its own weights over them)."""
        if self.starts_from_teacher:
            self._init_from_teacher()

    def _init_from_teacher(self) -> None:
        from featvlr.core.checkpoint import load_checkpoint, resolve_checkpoint

        opts = self.model_opts
        state = load_checkpoint(resolve_checkpoint(opts.teacher, opts.teacher_checkpoint))["model"]
        own = self.state_dict()
        wanted = [k for k in own if k.startswith(("encoders.", "criterion."))]
        bad = [k for k in wanted if k.startswith("encoders.") and (k not in state or state[k].shape != own[k].shape)]
        if bad:
            raise ConfigError(f"model.init_from_teacher: the teacher run's encoders do not match the student's "
                              f"(first mismatch: {bad[0]}); use the same model options or set "
                              "model.init_from_teacher=false")
        self.load_state_dict({k: state[k] for k in wanted if k in state and state[k].shape == own[k].shape},
                             strict=False)

    # -- training ------------------------------------------------------------------------
    def teacher_rows(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [B, Di], text [B, Dt])`` frozen teacher features of the batch's rows."""
        if self.model_opts.teacher == "features":
            return features_teacher(batch, self.model_opts.teacher_image)
        if self._table is None:
            if not self.model_opts.teacher_cache:
                raise ConfigError("rvlr: model.teacher_cache is not set; it is filled in by RVLR.prepare")
            self._table = load_teacher_cache(self.model_opts.teacher_cache)
        return self._table.lookup(batch["image_ids"], batch["text_ids"], batch["image_ids"].device)

    def students(self, v: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """The student batches whose relations the structure term compares with the mixture:
        the fused pair vectors, or the retrieval embeddings chosen by ``loss.relation``."""
        if self.fusion is not None:
            return [self.fusion(torch.cat([v, t], dim=-1))]
        relation = self.loss_opts.relation
        return [t] if relation == "text" else [v] if relation == "image" else [t, v]

    def training_step(self, batch, state: StepState):
        lo = self.loss_opts
        v_all = gather_with_grad(self.encode_images(batch))
        t_all = gather_with_grad(self.encode_texts(batch))
        ids = gather_no_grad(batch["image_ids"])
        with torch.no_grad():
            teacher_image, teacher_text = self.teacher_rows(batch)
            teacher_image, teacher_text = gather_no_grad(teacher_image), gather_no_grad(teacher_text)

        if self.starts_from_teacher:  # the hinge warm-up was the base's; the student goes on from there
            state = dataclasses.replace(state, epoch=state.epoch + lo.warmup_epochs)
        out = {"contrastive_loss": lo.contrastive_weight * cross_modal_loss(self.criterion, lo, v_all, t_all, ids,
                                                                              state)}
        scale = distill_scale(lo, v_all.shape[0], hinge=not isinstance(self.criterion, SoftIdInfoNCE),
                              temperature=self.representation.tau.detach())
        if lo.image_distill_weight:
            target = F.normalize(self.teacher_image_proj(teacher_image), dim=-1)
            out["image_distill_loss"] = scale * lo.image_distill_weight * self.representation(v_all, target, ids)
        if lo.text_distill_weight:
            target = F.normalize(self.teacher_text_proj(teacher_text), dim=-1)
            out["text_distill_loss"] = scale * lo.text_distill_weight * self.representation(t_all, target, ids)
        if lo.structure_weight or lo.mixture == "log" or lo.image_mixture_weight or lo.text_mixture_weight:
            s = self.structure(self.students(v_all, t_all), teacher_text, teacher_image)
            if lo.structure_weight:
                out["structure_loss"] = scale * lo.structure_weight * s["kd"]
            if lo.mixture == "train":
                if lo.image_mixture_weight:
                    out["image_mixture_loss"] = scale * lo.image_mixture_weight * s["kdi"]
                if lo.text_mixture_weight:
                    out["text_mixture_loss"] = scale * lo.text_mixture_weight * s["kdt"]
            else:  # diagnostics: how far the mixture sits from each teacher, never summed
                out["image_mixture"] = s["kdi"].detach()
                out["text_mixture"] = s["kdt"].detach()
        out.update(geometry(v_all, t_all, ids, teacher_image, teacher_text, self.structure.lam))
        out["lambda"] = self.structure.lam.detach()
        out["structure_temperature"] = self.structure.tau.detach()
        out["distill_temperature"] = self.representation.tau.detach()
        if isinstance(self.criterion, SoftIdInfoNCE):
            out["temperature"] = self.criterion.tau.detach()
        return out


@torch.no_grad()
def geometry(v: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, teacher_image: torch.Tensor,
             teacher_text: torch.Tensor, lam: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logged means of the off-diagonal cosines: the student's images (pairs of different
    images) and texts, and the teacher mixture ``lambda * cos_T + (1 - lambda) * cos_I``
    (what the absolute structure term pulls both toward)."""
    def cos(x: torch.Tensor) -> torch.Tensor:
        return off_diagonal(fp32_scores(fp32_normalize(x)))  # in float32, as every score

    other = off_diagonal((ids.unsqueeze(0) != ids.unsqueeze(1)).float()) > 0
    mix = lam.detach() * cos(teacher_text) + (1 - lam.detach()) * cos(teacher_image)
    return {"image_cosine": cos(v)[other].mean() if other.any() else v.new_zeros(()),
            "text_cosine": cos(t).mean(), "teacher_cosine": mix.mean()}
