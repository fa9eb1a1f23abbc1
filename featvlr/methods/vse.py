"""``vse``: the VSE++ / VSE-infinity baseline on frozen features.

Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives", BMVC 2018;
Chen et al., "Learning the Best Pooling Strategy for Visual Semantic Embedding", CVPR 2021.

Image: regions -> ``Linear + MLP`` (:class:`RegionProjection`) -> GPO -> L2 norm.
Text: frozen token features -> ``Linear`` -> GPO -> L2 norm.
Loss: the VSE++ hinge (margin 0.2), summing over negatives during ``warmup_epochs``
epochs and taking the hardest negative afterwards; or soft-id InfoNCE. ``id_mask`` (on by
default) keeps other captions of the same image from being negatives; off reproduces VSE++.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.schema import choice, number
from featvlr.losses import HingeLoss, SoftIdInfoNCE
from featvlr.methods.base import FeatureDims, Method, StepState
from featvlr.methods.encoders import TowerEncoders
from featvlr.methods.options import HingeOptions
from featvlr.methods.registry import register_method
from featvlr.modules import GPO, RegionProjection, masked_mean, maxk_pool
from featvlr.modules.precision import fp32


@dataclass
class VSEModelOptions:
    embed_dim: int = number(1024, min=1)
    # Pooling of projected tokens: "gpo" (VSE-infinity), "mean", "max" or "max2".
    pooling: str = choice("gpo", "gpo", "mean", "max", "max2")
    # BatchNorm statistics over padded regions too (the peer code's behaviour).
    bn_over_padding: bool = True
    # Text projection: "linear" (VSE-infinity over BERT tokens) or "mlp" (Linear + MLP like images).
    text_head: str = choice("linear", "linear", "mlp")


@dataclass
class VSELossOptions(HingeOptions):
    # "hinge" (VSE++) or "infonce" (soft image-id targets, learnable clamped temperature).
    kind: str = choice("hinge", "hinge", "infonce")
    # Hinge: sum over negatives for this many epochs, then the hardest negative.
    warmup_epochs: int = number(1, min=0)
    temperature: float = number(0.07, above=0)
    learnable_temperature: bool = True


def pool_tokens(kind: str, gpo: nn.Module | None, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pooling ``kind`` (one of ``VSEModelOptions.pooling``'s choices) of ``x [B, N, d]``."""
    if kind == "gpo":
        return gpo(x, mask)
    if kind == "mean":
        return masked_mean(x, mask)
    return maxk_pool(x, mask, 1 if kind == "max" else 2)


class VSEEncoders(nn.Module):
    """The two towers of VSE-infinity; HREM and the distillation methods reuse them."""

    def __init__(self, opts: VSEModelOptions, dims: FeatureDims):
        super().__init__()
        self.opts = opts
        self.image_proj = RegionProjection(dims.region_dim, opts.embed_dim, bn_over_padding=opts.bn_over_padding)
        if opts.text_head == "linear":
            self.text_proj = nn.Linear(dims.text_dim, opts.embed_dim)  # VSE-infinity: default init
        else:  # "mlp"
            self.text_proj = RegionProjection(dims.text_dim, opts.embed_dim, bn_over_padding=opts.bn_over_padding)
        self.image_gpo = GPO(32, 32) if opts.pooling == "gpo" else None
        self.text_gpo = GPO(32, 32) if opts.pooling == "gpo" else None

    def encode_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.image_proj(batch["regions"], batch["region_mask"])
        return F.normalize(pool_tokens(self.opts.pooling, self.image_gpo, x, batch["region_mask"]), dim=-1)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, mask = batch["tokens"], batch["token_mask"]
        x = self.text_proj(tokens) if self.opts.text_head == "linear" else self.text_proj(tokens, mask)
        return F.normalize(pool_tokens(self.opts.pooling, self.text_gpo, x, mask), dim=-1)


def build_cross_modal_loss(opts: VSELossOptions) -> nn.Module:
    """The criterion of ``loss.kind``: the VSE++ hinge or soft-id InfoNCE."""
    if opts.kind == "hinge":
        return HingeLoss(margin=opts.margin)
    return SoftIdInfoNCE(temperature=opts.temperature, learnable=opts.learnable_temperature)


def cross_modal_loss(criterion: nn.Module, opts: VSELossOptions, v: torch.Tensor, t: torch.Tensor,
                     image_ids: torch.Tensor, state: StepState) -> torch.Tensor:
    """The hinge (with its warm-up epochs) or InfoNCE on (already gathered) embeddings.

    Scores are computed in fp32 even under autocast: bf16 resolution near 1 (~0.004) is of
    the order of the gaps between hardest negatives.
    """
    with fp32(v, t) as (v32, t32):
        if isinstance(criterion, HingeLoss):
            hardest = opts.max_violation and state.epoch >= opts.warmup_epochs
            return criterion(v32 @ t32.t(), max_violation=hardest, image_ids=image_ids if opts.id_mask else None)
        return criterion(v32, t32, image_ids)


@register_method("vse")
class VSE(TowerEncoders, Method):
    """VSE++ / VSE-infinity dual encoder (see the module docstring)."""

    ModelOptions = VSEModelOptions
    LossOptions = VSELossOptions
    batch_keys = ("regions", "region_mask", "tokens", "token_mask", "image_ids")

    def __init__(self, model: VSEModelOptions, loss: VSELossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        self.encoders = VSEEncoders(model, dims)
        self.criterion = build_cross_modal_loss(loss)

    def training_step(self, batch, state: StepState):
        v = gather_with_grad(self.encode_images(batch))
        t = gather_with_grad(self.encode_texts(batch))
        ids = gather_no_grad(batch["image_ids"])
        out = {"contrastive_loss": cross_modal_loss(self.criterion, self.loss_opts, v, t, ids, state)}
        if isinstance(self.criterion, SoftIdInfoNCE):
            out["temperature"] = self.criterion.tau.detach()
        return out
