"""``mlcl``: multi-level contrastive learning for composed (hybrid) retrieval.

Zhao, Lu, Zhao, Wu and Lu, "Multi-level contrastive learning for hybrid cross-modal
retrieval", ICASSP 2024 (code: JWargrave/MLCL, a CLIP4Cir fork), on frozen features.

Model: :class:`~featvlr.modules.combiner.MultiLevelCombiner` over the frozen reference
image feature ``I`` and modifier text feature ``T``: low ``f_s = n(I + T)``, mid
``f_c = n(W_m h)``, high ``f_h`` (the CLIP4Cir output), and the learned branch weight
``w = 2 sigmoid(b)``.

Loss (:class:`~featvlr.losses.mlcl.MultiLevelContrastiveLoss`): mCCL
``w CE(s f_h y^T) + (2 - w) CE(s f_c y^T) + CE(s f_s y^T)`` + SSCL
``CE(s' n(z) n(z_aug)^T) + CE(s' f_h f_h,aug^T)``, every term in-batch over the global batch,
``s`` and ``s'`` learnable from 100.

Augmented reference (SSCL). ``loss.aug_source``:

- ``"cache"``: one of the K precomputed views ``images/<split>/global_aug`` per reference,
  drawn per step by :class:`featvlr.data.composed.ComposedBatches` (seeded by seed, epoch,
  batch and rank) and passed as ``reference_aug``; an error when the cache has none;
- ``"feature"``: a feature-space view made here from the frozen reference feature,
  ``I_aug = dropout(I, aug_dropout) + aug_noise * rms(I) * eps`` (inverted dropout, so
  the expected feature is unchanged; ``eps ~ N(0, 1)``; torch's seeded RNG). This is a
  deviation: the paper encodes image-space augmentations (crops, colour jitter, flips,
  rotations, perspective, greyscale) with the frozen CLIP encoder;
- ``"auto"`` (default): the cache's views when present, else the feature-space view.

Inference (``model.inference_weighting``). The reference code builds the query as
``n((2 - w) f_h + w f_c + f_s)`` although the loss weighs ``f_h`` by ``w`` and ``f_c`` by
``2 - w``. ``w`` is learned without a regulariser, with the gradient ``CE_h - CE_c``, so
it drifts toward the branch whose cross-entropy is lower (the high level, in practice) and
can approach 2 in a long run (b moves up to ``branch_lr`` per Adam step: 300 CIRR epochs
are ~8,400 steps); the swap then gives that better branch a weight going to 0 at test time.
featvlr defaults to ``"matched"``: ``n(w f_h + (2 - w) f_c + f_s)``, the weights the
branches were trained with, so the branch the loss favours also counts more at test time.
On the demo split (3 seeds, val, arithmetic mean of the 7 CIRR recalls; best.pt chosen
with ``"matched"``) the inference query scores 87.1 ``"matched"``, 86.7 ``"swapped"``,
86.8 ``"equal"``, above every level alone (high 85.2, mid 83.7, low 81.6); ``w`` had only
moved from 0.667 to 0.694 in those 420 steps. Varying the high-level weight of one model
from 0.5 to 2 changes little (81.7-82.4 in an earlier, shorter run), but weight 0 (the
swap's limit as ``w`` -> 2) costs ~2.7 points. ``"swapped"`` reproduces the
reference code; ``"equal"`` ignores ``w``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.schema import choice, number
from featvlr.losses.mlcl import MultiLevelContrastiveLoss
from featvlr.methods.base import FeatureDims, StepState
from featvlr.methods.combiner import ComposedMethod, ComposedModelOptions
from featvlr.methods.registry import register_method
from featvlr.modules.combiner import INFERENCE_WEIGHTINGS, CombinerLevels, MultiLevelCombiner

AUG_SOURCES = ("auto", "cache", "feature")


@dataclass
class MLCLModelOptions(ComposedModelOptions):
    # Branch weight w = 2 sigmoid(b), b initialised to log(branch_init) (0.5: w = 2/3).
    branch_init: float = number(0.5, above=0, below=1)
    # Learning rate of b (the reference code's second Adam group: 1e-3).
    branch_lr: float = number(1.0e-3, min=0)
    # Inference query: "matched" (training weights), "swapped" (reference code) or "equal".
    inference_weighting: str = choice("matched", *INFERENCE_WEIGHTINGS)


@dataclass
class MLCLLossOptions:
    # Initial value of both logit scales; learnable (reference code learn_t=1) or fixed.
    scale: float = number(100.0, above=0)
    learnable_scale: bool = True
    # Clamp the learned scales at this value (0: unclamped, as in the reference code).
    max_scale: float = number(0.0, min=0)
    # Weight of the parameter-free low-level (I + T) term and of both SSCL terms.
    low_weight: float = number(1.0, min=0)
    sscl_weight: float = number(1.0, min=0)
    # Repeated targets in a batch are not negatives of each other (off: the paper's arange CE).
    mask_duplicate_targets: bool = False
    # Where the augmented reference comes from: "auto", "cache" or "feature".
    aug_source: str = choice("auto", *AUG_SOURCES)
    # Feature-space fallback view: inverted-dropout probability and relative Gaussian noise.
    aug_dropout: float = number(0.1, min=0, below=1)
    aug_noise: float = number(0.1, min=0)


def feature_space_view(x: torch.Tensor, *, dropout: float, noise: float) -> torch.Tensor:
    """``dropout(x) + noise * rms(x) * eps``: a feature-space augmented view of ``x [B, d]``."""
    out = F.dropout(x, p=dropout, training=True) if dropout > 0 else x
    if noise > 0:
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        out = out + noise * rms * torch.randn_like(x)
    return out


@register_method("mlcl")
class MLCL(ComposedMethod):
    """MLCL: multi-level Combiner, mCCL + SSCL (see the module docstring)."""

    ModelOptions = MLCLModelOptions
    LossOptions = MLCLLossOptions

    def required_batch_keys(self) -> dict[str, str]:
        """The Combiner's keys, and the cached augmented views with ``loss.aug_source: cache``."""
        keys = super().required_batch_keys()
        if self.loss_opts.sscl_weight and self.loss_opts.aug_source == "cache":
            keys["reference_aug"] = "loss.aug_source=cache (use auto or feature without cached views)"
        return keys

    def __init__(self, model: MLCLModelOptions, loss: MLCLLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        d = self._setup_inputs(model, dims)
        self.combiner = MultiLevelCombiner(feature_dim=d, projection_dim=model.projection_dim,
                                           hidden_dim=model.hidden_dim, dropout=model.dropout,
                                           branch_init=model.branch_init)
        self.criterion = MultiLevelContrastiveLoss(
            scale=loss.scale, learnable_scale=loss.learnable_scale, max_scale=loss.max_scale,
            low_weight=loss.low_weight, sscl_weight=loss.sscl_weight,
            mask_duplicate_targets=loss.mask_duplicate_targets)

    # -- evaluation ----------------------------------------------------------------------
    def encode_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image, text = self.inputs(batch)
        return self.combiner.query(image, text, self.model_opts.inference_weighting)

    # -- training ------------------------------------------------------------------------
    def augmented_reference(self, batch: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor | None:
        """The augmented reference view in the Combiner's input space (None without SSCL)."""
        opts = self.loss_opts
        if not opts.sscl_weight:
            return None
        if opts.aug_source != "feature" and "reference_aug" in batch:
            return self.prepare_image(batch["reference_aug"])
        return feature_space_view(image, dropout=opts.aug_dropout, noise=opts.aug_noise)

    def training_step(self, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, torch.Tensor]:
        image, text = self.inputs(batch)
        lv = self.combiner.levels(image, text, self.augmented_reference(batch, image))
        gathered = CombinerLevels(
            low=gather_with_grad(lv.low), mid=gather_with_grad(lv.mid), high=gather_with_grad(lv.high),
            z=gather_with_grad(lv.z), lam=lv.lam,
            z_aug=gather_with_grad(lv.z_aug) if lv.z_aug is not None else None,
            high_aug=gather_with_grad(lv.high_aug) if lv.high_aug is not None else None)
        y = gather_no_grad(batch["target_image"].float())
        ids = gather_no_grad(batch["target_ids"])
        w = self.combiner.branch_weight()
        out = self.criterion(gathered, y, w, ids)
        out["branch_weight"] = w.detach().reshape(())
        out["lambda"] = lv.lam.detach().mean()
        return out

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The reference code's two groups: everything at ``lr``, the branch logit at ``branch_lr``."""
        branch = self.combiner.branch_logit
        groups = [dict(g, params=[p for p in g["params"] if p is not branch])
                  for g in super().param_groups(lr, weight_decay)]
        groups = [g for g in groups if g["params"]]
        groups.append({"params": [branch], "lr": self.model_opts.branch_lr, "weight_decay": 0.0})
        return groups
