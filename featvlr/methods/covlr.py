"""``covlr``: meta-learning that coordinates cross-modal consistency with intra-modal structure.

Yang et al., "CoVLR: Coordinating Cross-Modal Consistency and Intra-Modal Relations for
Vision-Language Retrieval", ICME 2024 (code: njustkmg/ICME2024-CoVLR; its public code has no
meta-learning loop, so this is a reconstruction of the step the paper describes).

Claim: a hard cross-modal consistency loss disturbs the neighbourhood structure within the
stronger modality and hurts image-to-image and text-to-text retrieval; validating every
consistency update on an intra-modal structure-preserving task keeps both.

One training step on the VSE-infinity towers (:class:`~featvlr.methods.vse.VSEEncoders`):

1. meta-train: ``L_cm(theta)``, the cross-modal loss of ``vse`` (hinge or soft-id InfoNCE)
   on the all-gathered embeddings, so it is the global-batch loss under DDP;
2. virtual step: ``theta' = theta - delta`` along ``-grad L_cm(theta)`` on the parameters
   chosen by ``loss.virtual_params``, kept in the autograd graph (second order) or detached
   (``loss.first_order``). ``loss.virtual_step`` sizes it: ``normalized`` (default)
   ``|delta| = alpha * |theta_V|``, a fixed fraction of the weights whatever the loss's
   reduction, the batch size or the training phase; ``mean``: SGD with step ``alpha`` on
   ``L_cm`` divided by its number of anchor terms (``2B`` for the hinge); ``sum``: SGD on the
   summed loss (earlier behaviour: grows with the batch, ~60x larger in the hinge warm-up).
   No virtual step in the hinge's warm-up epochs (``loss.meta_during_warmup``);
3. meta-test: ``L_mt(theta')``, intra-modal structure preservation evaluated with the virtual
   parameters through :func:`torch.func.functional_call`: the relation matrix of the student
   embeddings of each modality is matched (row-wise KL over softmax rows, or MSE) to the
   relation matrix of frozen reference features of the same items (the teachers, below).
   Each image counts once; ``loss.exclude_positives`` leaves pairs of captions of the same
   image out of the text relations (the consistency task pulls those together on purpose);
4. the returned losses are ``contrastive_loss = L_cm(theta)`` and
   ``meta_loss = beta * L_mt(theta')``; the trainer back-propagates their sum, whose gradient
   is ``grad L_cm(theta) + beta * (I - dDelta/dtheta)^T grad L_mt(theta')`` (for an SGD step,
   ``(I - alpha * H) grad L_mt(theta')``, H the Hessian of ``L_cm`` on the virtually updated
   block; the second-order part is dropped in the first-order variant).

**Teachers** (``loss.reference``): with ``features`` (default), the cached, frozen features of
the *training* rows: ``pooled_text`` for captions (the text encoder's pooled sentence vector,
all-MiniLM-L6-v2 by default, trained on a large corpus of sentence pairs for semantic
similarity) and the mean of the image's region features (``image_feature: mean_regions``; or
the cache's global vector, e.g. CLIP's ``image_embeds``) for images. They should know more
about intra-modal neighbourhoods than the student because they were trained on far more data
for exactly that (sentence similarity, visual recognition), whereas the student's towers are
trained only to rank the other modality and may merge or scatter items of one modality as
that ranking allows. A featvlr run (``reference: <run>``) uses its embeddings instead. Never
a relevance matrix: ROUGE-L / SPICE relevance exists only for evaluation splits and is read
by evaluation alone. The MiniLM neighbourhood is not ROUGE-L's: preserving it can lower text
NDCG measured against ROUGE-L while it raises image-side NDCG.

**Logged per step** (averaged per epoch into ``train_*`` of log.jsonl): ``meta_step_on`` (1
where a virtual step was taken; never 1 gets the trainer's "never acted" warning),
``virtual_step_norm`` (``|delta|``), ``virtual_step_rel`` (``|delta| / |theta_V|``) and, with
``loss.log_meta_cosine``, ``meta_plain_cosine``: the cosine between the meta gradient
``grad_theta L_mt(theta')`` and the plain structure gradient ``grad_theta L_mt(theta)`` (1: the
meta step does nothing a weighted structure term would not), with ``meta_grad_norm`` and
``plain_grad_norm`` (:func:`~featvlr.methods.meta_step.meta_gradient_loss`).

Inputs: a cross-modal training batch (``regions``, ``region_mask``, ``tokens``,
``token_mask``, ``pooled_text``, ``image_ids``; see :mod:`featvlr.methods.base`).
Outputs: ``contrastive_loss``, ``meta_loss`` and logged scalars ``meta_test``,
``meta_test_image``, ``meta_test_text``, ``virtual_step_norm``, ``virtual_step_rel`` and the
gradient diagnostics above. At test time ``covlr`` is the
plain dual encoder (``encode_images`` / ``encode_texts``), and with ``beta = 0`` it is exactly
``vse`` (same parameter names, same gradients).

Notes on the implementation:

- **Meta-test batch** (``loss.meta_test_batch``): "same" uses the whole batch for both tasks;
  "split" follows MLDG (Li et al., AAAI 2018): the first half of the batch is the meta-train
  batch (``L_cm`` and the virtual step), the second half the meta-test batch. Under DDP each
  rank splits its own share, so both halves are spread over all ranks.
- **BatchNorm**: the ordinary forward at ``theta`` updates the running statistics once; the
  virtual forward gets *copies* of the buffers, so its statistics updates are discarded and
  the running statistics move exactly as in ``vse``. Both forwards normalise with the
  statistics of their own batch in training mode.
- **DDP**: the inner gradient is taken with :func:`torch.autograd.grad` inside the forward,
  which fires none of DDP's gradient hooks; DDP's all-reduce happens only on the outer
  backward. The inner gradient is computed per rank as this rank's exact share of the
  global-batch gradient (gradient of the gathered loss w.r.t. the gathered embeddings, then
  back through the local towers only), and ``loss.sync_inner_grad`` (default on) sums the
  shares over ranks with a differentiable all-reduce, so every rank takes the same virtual
  step as one process on the global batch would. Off: each rank steps with ``world_size``
  times its own share (a local estimate of the global gradient, no extra communication).
  The meta-test embeddings are gathered too, so the relation matrices cover the global batch.
  As for every method, BatchNorm statistics are per rank.
- **AMP**: the step runs under the trainer's autocast; :func:`torch.autograd.grad` with
  ``create_graph`` records the backward ops in the dtypes autocast chose for the forward.
  Relation matrices are computed in float32. Under float16 autocast the inner loss is scaled
  by ``loss.inner_loss_scale`` before the inner gradient and the gradient unscaled after
  (the trainer's GradScaler only sees the outer loss); bfloat16 needs no scaling.
- **GRU (GPO) and cuDNN**: cuDNN's RNN kernels have no double backward, so with second-order
  meta-gradients on CUDA the step runs with cuDNN disabled (the GPO's GRU is tiny and runs
  once per distinct length; nothing else here uses cuDNN).
- **Cost**: one extra backward with ``create_graph`` plus one extra forward of the towers at
  ``theta'``, and a double backward (in the step with ``loss.log_meta_cosine``, where one
  first-order backward of the plain structure term is added; in the outer pass without);
  ``benchmarks/speed/bench_covlr_step.py`` measures it against ``vse``.

Measured (``benchmarks/experiments/equal_epochs.py``, test rsum, paired by seed): on a demo ``vse``
checkpoint the earlier SGD step (alpha 1e-3 on the summed hinge) moved the weights by 0.03 %,
meta/plain cosine 0.9999; normalised steps of 0.5 / 2 / 5 % give 0.98 / 0.74 / 0.41. In
training the meta-step acts (per-epoch cosine 0.04-0.85 at alpha 0.02, 0.8-0.95 at 0.005)
but does not help: against alpha 0 (the structure term at theta), alpha 0.02 gives -7.3 /
-1.0 on the demo and -7.8 on the second configuration, alpha 0.005 -3.8 / -3.8 on the demo.
``configs/demo_covlr.yaml`` sets alpha 0; the Flickr30K / COCO configs keep alpha 0.02,
unmeasured on real features. i2i NDCG rises above ``vse``'s and t2t NDCG falls below it
either way (the sentence embeddings' neighbourhood is not ROUGE-L's).

Example::

    featvlr train --config configs/demo_covlr.yaml --set loss.beta=2.0 --set loss.first_order=true
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from featvlr.core import distributed as dist_utils
from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.errors import ConfigError
from featvlr.core.schema import choice, number
from featvlr.losses import HingeLoss, SoftIdInfoNCE
from featvlr.losses.structure import MATCHES, RELATIONS, StructurePreservationLoss
from featvlr.methods.base import FeatureDims, LoadRun, Method, StepState
from featvlr.methods.encoders import TowerEncoders
from featvlr.methods.meta_step import (
    all_reduce_grads,
    anchor_count,
    first_occurrence,
    meta_gradient_loss,
    select_virtual,
    split_batch,
    sum_sizes_before,
)
from featvlr.methods.registry import register_method
from featvlr.methods.vse import (
    VSE,
    VSEEncoders,
    VSELossOptions,
    VSEModelOptions,
    build_cross_modal_loss,
    cross_modal_loss,
)
from featvlr.modules import masked_mean

META_TEST_BATCHES = ("same", "split")
# How the virtual step is sized: "normalized" (||delta|| = alpha * ||theta||, along -grad),
# "mean" (SGD with step alpha on L_cm divided by its number of anchor terms) or "sum" (SGD on
# L_cm as the trainer sees it: the hinge's batch sum, the earlier behaviour).
VIRTUAL_STEPS = ("normalized", "mean", "sum")
MODALITIES = ("image", "text")


@dataclass
class CoVLRModelOptions(VSEModelOptions):
    """The towers are those of ``vse``."""


@dataclass
class CoVLRLossOptions(VSELossOptions):
    """``vse``'s cross-modal loss options plus the meta-learning step."""

    # Weight of the meta-test loss in the outer objective (0: plain vse).
    beta: float = number(1.0, min=0)
    # The virtual step theta' = theta - delta. "normalized": delta = alpha * ||theta_V|| *
    # g / ||g|| (g = grad L_cm on the virtual block theta_V): alpha is the step's size relative
    # to the weights, whatever the loss's reduction, batch size or phase. "mean": delta =
    # alpha * grad(L_cm / n), n the loss's number of anchor terms (2B for the hinge, 1 for
    # InfoNCE, already a mean). "sum": delta = alpha * grad L_cm (scales with the batch).
    virtual_step: str = choice("normalized", *VIRTUAL_STEPS)
    alpha: float = number(0.02, min=0)
    # During the hinge's sum-over-negatives warm-up the virtual step is left out (meta-test at
    # theta): there the summed loss's gradient is large and points against the structure
    # (measured: a step of 12 % of the weights, meta gradient at cosine -0.72 with the plain
    # structure gradient). true takes the step in the warm-up too.
    meta_during_warmup: bool = False
    # Log, per step, the cosine between the meta gradient grad_theta L_mt(theta') and the plain
    # structure gradient grad_theta L_mt(theta) (meta_plain_cosine; one extra first-order backward).
    log_meta_cosine: bool = True
    # Detach the inner gradient (no second-order term).
    first_order: bool = False
    # Which parameters take the virtual step: "all" (every tower parameter), "heads" (the
    # projection heads, not the GPO) or parameter-name prefixes relative to the towers, e.g.
    # ["text_proj", "image_proj.fc"]. The others enter the meta-test at their current value.
    virtual_params: list[str] = field(default_factory=lambda: ["all"])
    # "same": meta-test on the meta-train batch; "split": first half meta-train, second half
    # meta-test.
    meta_test_batch: str = choice("same", *META_TEST_BATCHES)
    # Modalities whose intra-modal structure is preserved, and their weights in L_mt.
    modalities: list[str] = choice(lambda: ["image", "text"], *MODALITIES, each=True)
    image_weight: float = number(1.0, min=0)
    text_weight: float = number(1.0, min=0)
    # Relation matrices: "cosine", "dot" or "euclidean"; matched by "kl" (rows softmax-
    # normalised, KL(reference || student)), "mse" or "mae"; both divided by the temperature.
    relation: str = choice("cosine", *RELATIONS)
    match: str = choice("kl", *MATCHES)
    structure_temperature: float = number(0.05, above=0)
    # Reference features: "features" (pooled_text for texts; image_feature for images) or a
    # featvlr run folder / checkpoint whose embeddings are the reference (a teacher run).
    reference: str = "features"
    # Image reference when reference = "features": "mean_regions" or "global" (global_image).
    image_feature: str = choice("mean_regions", "mean_regions", "global")
    # Count every image once in the image relation matrix (batches hold captions, so an image
    # with two captions in the batch would appear twice).
    dedupe_images: bool = True
    # Leave pairs of captions of the same image out of the text relations: the cross-modal
    # loss pulls them together on purpose, the structure task then only keeps the relations
    # to other images' captions.
    exclude_positives: bool = False
    # DDP: sum the ranks' shares of the inner gradient (exact global virtual step).
    sync_inner_grad: bool = True
    # Under float16 autocast: scale of the inner loss before its gradient (unscaled after).
    inner_loss_scale: float = number(1024.0, above=0)


class _Towers(nn.Module):
    """Calls the towers of one modality or both; the module that ``functional_call`` runs."""

    def __init__(self, encoders: VSEEncoders):
        super().__init__()
        self.encoders = encoders

    def forward(self, batch: dict[str, torch.Tensor], images: bool, texts: bool):
        v = self.encoders.encode_images(batch) if images else None
        t = self.encoders.encode_texts(batch) if texts else None
        return v, t


@register_method("covlr")
class CoVLR(TowerEncoders, Method):
    """CoVLR's meta-learning step on the VSE-infinity towers (see the module docstring).

    Input: cross-modal training batches; output of ``training_step``: ``contrastive_loss``
    (``L_cm`` at theta) and ``meta_loss`` (``beta * L_mt`` at theta'), plus logged scalars.
    """

    ModelOptions = CoVLRModelOptions
    LossOptions = CoVLRLossOptions
    batch_keys = VSE.batch_keys

    def __init__(self, model: CoVLRModelOptions, loss: CoVLRLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        self.encoders = VSEEncoders(model, dims)
        self.criterion = build_cross_modal_loss(loss)
        self.virtual_names = select_virtual([n for n, _ in self.encoders.named_parameters()], loss.virtual_params)
        self.structure = StructurePreservationLoss(relation=loss.relation, match=loss.match,
                                                   temperature=loss.structure_temperature)
        self._teacher: list[Method] = []  # a plain list: the teacher is not a submodule

    def required_batch_keys(self) -> dict[str, str]:
        """``vse``'s keys, and the reference features of ``loss.reference: features``."""
        keys, o = super().required_batch_keys(), self.loss_opts
        if o.beta and o.reference == "features":
            if "text" in o.modalities:
                keys["pooled_text"] = "loss.reference=features"
            if "image" in o.modalities and o.image_feature == "global":
                keys["global_image"] = "loss.image_feature=global"
        return keys

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch, state: StepState):
        o = self.loss_opts
        if o.beta == 0:  # the base method, without the cost of the meta step
            v = gather_with_grad(self.encode_images(batch))
            t = gather_with_grad(self.encode_texts(batch))
            ids = gather_no_grad(batch["image_ids"])
            out = {"contrastive_loss": cross_modal_loss(self.criterion, o, v, t, ids, state)}
            return self._log_temperature(out)

        train_batch, test_batch = split_batch(batch) if o.meta_test_batch == "split" else (batch, batch)
        device = batch["image_ids"].device
        no_cudnn = device.type == "cuda" and not o.first_order
        guard = torch.backends.cudnn.flags(enabled=False) if no_cudnn else contextlib.nullcontext()
        warmup = isinstance(self.criterion, HingeLoss) and state.epoch < o.warmup_epochs
        stepping = o.alpha > 0 and (o.meta_during_warmup or not warmup)
        with guard:
            # 1. meta-train at theta (the ordinary forward: running statistics update once).
            v_loc, t_loc = self.encode_images(train_batch), self.encode_texts(train_batch)
            v, t = gather_with_grad(v_loc), gather_with_grad(t_loc)
            ids = gather_no_grad(train_batch["image_ids"])
            l_cm = cross_modal_loss(self.criterion, o, v, t, ids, state)
            # 2. virtual step theta' = theta - delta (none in the hinge's warm-up by default).
            if stepping:
                fast, step_norm, rel = self._virtual_step(l_cm, v, t, v_loc, t_loc)
            else:
                fast, step_norm, rel = {}, l_cm.new_zeros(()), l_cm.new_zeros(())
            # 3. meta-test at theta'.
            l_mt, parts = self._meta_test(test_batch, fast)
            # meta_step_on: 1 where a virtual step was taken; a run where it stays 0 (alpha = 0, or
            # all of it in the warm-up) is told by the trainer that the meta-step never acted.
            out = {"contrastive_loss": l_cm, "meta_test": l_mt.detach(), "virtual_step_norm": step_norm,
                   "virtual_step_rel": rel, "meta_step_on": l_cm.new_tensor(float(stepping)).detach()}
            if o.log_meta_cosine:
                meta_loss, diag = self._meta_loss_and_cosine(l_mt, test_batch, v_loc, t_loc, stepping)
                out["meta_loss"] = meta_loss
                out.update(diag)
            else:
                out["meta_loss"] = o.beta * l_mt
        out.update({f"meta_test_{k}": p.detach() for k, p in parts.items()})
        return self._log_temperature(out)

    def _meta_loss_and_cosine(self, l_mt: torch.Tensor, test_batch: dict[str, torch.Tensor], v_loc: torch.Tensor,
                              t_loc: torch.Tensor, stepping: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``beta * L_mt(theta')`` and the logged gradient diagnostics (:func:`meta_gradient_loss`);
        the plain structure term is ``L_mt`` at theta on the meta-test batch."""
        o = self.loss_opts
        plain = None
        if stepping:
            if o.meta_test_batch == "same":
                v_plain, t_plain = v_loc, t_loc
            else:
                v_plain, t_plain = self.encode_images(test_batch), self.encode_texts(test_batch)
            plain, _ = self._structure(test_batch, v_plain, t_plain)
        params = [p for p in self.encoders.parameters() if p.requires_grad]
        return meta_gradient_loss(l_mt, plain, params, o.beta, self._inner_scale(l_mt.device))

    def _log_temperature(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(self.criterion, SoftIdInfoNCE):
            out["temperature"] = self.criterion.tau.detach()
        return out

    def _inner_scale(self, device: torch.device) -> float:
        if device.type == "cuda" and torch.is_autocast_enabled("cuda") \
                and torch.get_autocast_dtype("cuda") == torch.float16:
            return self.loss_opts.inner_loss_scale
        return 1.0

    def _virtual_step(self, l_cm: torch.Tensor, v: torch.Tensor, t: torch.Tensor, v_loc: torch.Tensor,
                      t_loc: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """``{name: theta - delta}`` for the virtually updated parameters, ``|delta|`` and
        ``|delta| / |theta_V|`` (``delta`` sized by ``loss.virtual_step``).

        ``g`` is this rank's share of the global-batch gradient: the gradient of ``L_cm``
        w.r.t. the gathered embeddings, sliced to this rank's rows, back through the local
        towers. Summed over ranks (``sync_inner_grad``) it is the global-batch gradient.
        """
        o = self.loss_opts
        params = dict(self.encoders.named_parameters())
        names = [n for n in self.virtual_names if params[n].requires_grad]
        create = not o.first_order
        scale = self._inner_scale(l_cm.device)
        g_v, g_t = torch.autograd.grad(l_cm * scale, (v, t), create_graph=create, retain_graph=True)
        world = dist_utils.world_size()
        if world > 1:
            start = sum_sizes_before(v_loc.shape[0])
            g_v, g_t = g_v[start:start + v_loc.shape[0]], g_t[start:start + t_loc.shape[0]]
        grads = torch.autograd.grad((v_loc, t_loc), [params[n] for n in names], grad_outputs=(g_v, g_t),
                                    create_graph=create, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(params[n]) if g is None else g / scale for n, g in zip(names, grads)]
        if o.first_order:
            grads = [g.detach() for g in grads]
        if world > 1:
            grads = all_reduce_grads(grads, differentiable=create) if o.sync_inner_grad else [g * world for g in grads]
        if not grads:
            return {}, l_cm.new_zeros(()), l_cm.new_zeros(())
        with torch.no_grad():
            theta_norm = torch.sqrt(sum((params[n].float() ** 2).sum() for n in names))
        if o.virtual_step == "normalized":
            g_norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).clamp_min(1e-12)
            factor = o.alpha * theta_norm / g_norm
        elif o.virtual_step == "mean":
            factor = o.alpha / anchor_count(self.criterion, v.shape[0])
        else:
            factor = o.alpha
        deltas = [factor * g for g in grads]
        fast = {n: params[n] - d for n, d in zip(names, deltas)}
        with torch.no_grad():
            step_norm = torch.sqrt(sum((d.float() ** 2).sum() for d in deltas))
        return fast, step_norm.detach(), (step_norm / theta_norm.clamp_min(1e-12)).detach()

    def _meta_test(self, batch: dict[str, torch.Tensor], fast: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_mt`` at the virtual parameters and its per-modality parts."""
        o = self.loss_opts
        want_img, want_txt = "image" in o.modalities, "text" in o.modalities
        params = {f"encoders.{n}": p for n, p in self.encoders.named_parameters()}
        params.update({f"encoders.{n}": p for n, p in fast.items()})
        # Copies of the buffers: the virtual forward's BatchNorm statistics updates are dropped.
        buffers = {f"encoders.{n}": b.clone() for n, b in self.encoders.named_buffers()}
        v_fast, t_fast = functional_call(_Towers(self.encoders), (params, buffers), (batch, want_img, want_txt))
        return self._structure(batch, v_fast, t_fast)

    def _structure(self, batch: dict[str, torch.Tensor], v_fast: torch.Tensor | None, t_fast: torch.Tensor | None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_mt`` of (local) student embeddings against the frozen references, and its parts."""
        o = self.loss_opts
        want_img, want_txt = "image" in o.modalities, "text" in o.modalities
        ref_v, ref_t = self._references(batch, want_img, want_txt)
        parts: dict[str, torch.Tensor] = {}
        if want_img:
            v_all, r_all = gather_with_grad(v_fast), gather_no_grad(ref_v)
            if o.dedupe_images:
                keep = first_occurrence(gather_no_grad(batch["image_ids"]))
                v_all, r_all = v_all[keep], r_all[keep]
            parts["image"] = self.structure(v_all, r_all)
        if want_txt:
            ignore = None
            if o.exclude_positives:
                ids = gather_no_grad(batch["image_ids"])
                ignore = ids.unsqueeze(0) == ids.unsqueeze(1)
            parts["text"] = self.structure(gather_with_grad(t_fast), gather_no_grad(ref_t), ignore)
        weights = {"image": o.image_weight, "text": o.text_weight}
        l_mt = sum(weights[k] * p for k, p in parts.items())
        return l_mt, parts

    @torch.no_grad()
    def _references(self, batch: dict[str, torch.Tensor], images: bool, texts: bool):
        """Frozen reference features of the batch's images and texts (no gradient)."""
        o = self.loss_opts
        if o.reference != "features":
            teacher = self.teacher(batch["image_ids"].device)
            return (teacher.encode_images(batch) if images else None,
                    teacher.encode_texts(batch) if texts else None)
        ref_v = ref_t = None
        if images:
            ref_v = (batch["global_image"] if o.image_feature == "global"
                     else masked_mean(batch["regions"], batch["region_mask"]))
        if texts:
            ref_t = batch["pooled_text"]
        return ref_v, ref_t

    def attach_runs(self, load_run: LoadRun) -> None:
        """A run reference (``loss.reference``) is loaded once, frozen, in eval mode."""
        if self.loss_opts.reference != "features":
            teacher, _ = load_run(self.loss_opts.reference, "cpu")
            self._teacher[:] = [teacher.requires_grad_(False).eval()]

    def teacher(self, device: torch.device) -> Method:  # the reference run's method, on ``device``
        if not self._teacher:
            raise ConfigError("covlr: loss.reference names a run, but no run was attached (attach_runs)")
        return self._teacher[0].to(device)


__all__ = ["CoVLR", "CoVLRLossOptions", "CoVLRModelOptions", "first_occurrence", "select_virtual",
           "split_batch"]
