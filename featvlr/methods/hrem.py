"""``hrem``: fragment-level and instance-level relation modelling on frozen features.

Fu, Mao, Zhang, Chen, Zhang, "Learning Semantic Relationship among Instances for Image-Text
Matching", CVPR 2023 (reference code: CrossmodalGroup/HREM).

Encoders (also the test-time model, a plain dual encoder):

- image: regions -> ``Linear + MLP`` (:class:`~featvlr.modules.RegionProjection`);
  text: frozen token features -> ``Linear`` (or ``Linear + MLP``);
- pooling (:class:`~featvlr.modules.FragmentPool`): ``0.8 * max-2 + 0.2 * mean`` of a
  1-layer fragment transformer (16 heads, FFN = embed, dropout 0.1, key-padding mask);
  then L2 norm.

Training loss, on the embeddings of the global batch (gathered across ranks under DDP):

- before ``graph_warmup_steps`` optimiser steps: ``L_base(v, t)`` only;
- after: ``L_base(v, t) + L(v, t^) + L(v^, t) + L(v^, t^) + reg_weight * KL``, where
  ``v^, t^`` come from the instance-level relation transformer over the ``2B`` embeddings
  (:class:`~featvlr.modules.InstanceRelation`) and KL is :class:`~featvlr.losses.RelevanceKLLoss`.

``L`` is the distance-weighted triplet loss (:class:`~featvlr.losses.DistanceWeightedTripletLoss`,
id-based positives, summed) or the VSE++ hinge (id mask, sum over negatives during
``hinge_warmup_epochs`` then the hardest).

Quirks of the reference code and featvlr's choices (the reference's behaviour is reachable by
an option wherever it changes numbers):

- ``model.fragment_padding``: "paper" (default, the reference) lets padding slots into the
  fragment max / mean / top-k (they hold the projection of the zero padding; a caption
  shorter than ``topk`` contributes ``topk`` slots); "masked" scores only valid words and
  regions. Kept as the default because it is the reference's behaviour and it scored higher
  on the demo's dev split in 3 of 3 seeds. Under DDP each rank first pads its inputs to the
  longest over ranks and the region MLP's BatchNorm takes its statistics over all ranks
  (:func:`~featvlr.modules.heads.synced_batch_norm`), so both modes equal one process on the
  whole batch (up to floating-point summation order).
- ``model.bn_over_padding``: True (default, the reference) includes zero-padded regions in
  the BatchNorm statistics of the region MLP; False uses valid regions only.
- ``loss.on_empty``: "skip" (default) drops only the anchors that cannot sample a negative
  below the cutoff; "zero" is the reference (one such anchor zeroes the whole direction).
- ``loss.stable_weights``: True (default) normalises the sampling log-weights by their
  maximum over samplable negatives; the reference takes the maximum over all negatives, so
  one negative far beyond the cutoff (cosine below about -0.6) underflows the whole row to 0
  and, with "zero", silences the direction. ``stable_weights=false, on_empty=zero`` is the
  reference loss.
- Every ``Linear`` of the image projection (``fc`` and both layers of the MLP) is
  Xavier-uniform initialised with zero biases, as the reference's image encoder; ``vse``
  keeps PyTorch's default init on the MLP (VSE-infinity's), and ``model.image_init:
  default`` gives HREM that init. On frozen demo regions it scored higher on every seed, and
  so did ``loss.n_dim: 256`` (softer negatives than the reference's 512: ``n_dim`` acts as
  an inverse temperature on the hardness of the drawn negative, whatever the embedding
  size); ``configs/demo_hrem.yaml`` uses both (``docs/results.md``).
- The text projection is Xavier-initialised (shared with ``vse``); the reference uses
  PyTorch's default ``nn.Linear`` init on top of a fine-tuned BERT, which featvlr does not
  fine-tune.
- Negative sampling draws from a generator seeded by (run seed, step, term), identical on
  all ranks, so DDP equals one process on the global batch.
- The reference's earlier commit built the intra-modal connections from the cross-modal
  product ``t v^T``; featvlr uses ``v v^T`` and ``t t^T`` (its later fix).
- The reference keeps the checkpoint with the best test rsum; featvlr selects on dev.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from featvlr.core import distributed as dist_utils
from featvlr.core.errors import ConfigError
from featvlr.core.schema import choice, number
from featvlr.losses.hinge import HingeLoss
from featvlr.losses.relevance_kl import RelevanceKLLoss
from featvlr.losses.triplet import DistanceWeightedTripletLoss
from featvlr.methods.base import FeatureDims, Method, StepState
from featvlr.methods.options import HingeOptions
from featvlr.methods.registry import register_method
from featvlr.methods.vse import VSEEncoders, VSEModelOptions
from featvlr.modules.fragment import FragmentPool
from featvlr.modules.precision import fp32
from featvlr.modules.relation import InstanceRelation


@dataclass
class HREMModelOptions:
    embed_dim: int = number(1024, min=1)
    # BatchNorm statistics of the region MLP over padded regions too (the reference).
    bn_over_padding: bool = True
    # Text projection: "linear" (the reference, over BERT tokens) or "mlp" (Linear + MLP).
    text_head: str = choice("linear", "linear", "mlp")
    # Fragment level: pooled = w * max-2 + (1 - w) * mean(transformer(tokens)).
    residual_weight: float = number(0.8, min=0, max=1)
    fragment_heads: int = number(16, min=1)
    fragment_layers: int = number(1, min=1)
    dropout: float = number(0.1, min=0, below=1)
    # Instance level (training only): the relation transformer over the 2B batch embeddings.
    graph_layers: int = number(1, min=1)
    graph_heads: int = number(16, min=1)
    graph_dropout: float = number(0.1, min=0, below=1)
    # Top-k fragment scores fed to the relevance MLPs; connections keep the top `threshold` of a row.
    topk: int = number(10, min=1)
    threshold: float = number(0.5, min=0, max=1)
    # Intra-modal relevance exp(-distance / sigma).
    sigma: float = number(1.0, above=0)
    # Scale of the relevance inside the attention mask (1.0 F30K, 1.5 COCO).
    mask_weight: float = number(1.0, min=0)
    # "paper" (padding slots enter the fragment max / mean / top-k, as the reference) or "masked"
    # (valid fragments only). "paper" scored higher on the demo's dev split (3 seeds).
    fragment_padding: str = choice("paper", "paper", "masked")
    # Largest [captions, images, words, regions] block of the fragment similarity held at once.
    chunk_elements: int = number(33554432, min=1)
    # Learning-rate factor of the relation module's parameter group.
    graph_lr_factor: float = number(1.0, min=0)
    # Weight decay on every parameter, biases and norms included (the reference's AdamW).
    decay_all: bool = True
    # Init of the image projection: "xavier" (the reference: every Linear, zero biases) or "default"
    # (vse's: Xavier on fc, PyTorch's default on the MLP).
    image_init: str = choice("xavier", "xavier", "default")


@dataclass
class HREMLossOptions(HingeOptions):
    # Loss of the initial embeddings and of the relation-enhanced ones: "triplet" or "hinge".
    base: str = choice("triplet", "triplet", "hinge")
    graph: str = choice("triplet", "triplet", "hinge")
    # Distance-weighted sampling: negatives at distance >= cutoff are never drawn (1.7 F30K, 1.9 COCO).
    cutoff: float = number(1.7, above=0)
    # The n of the sphere distance density (the reference hard-codes 512) and the distance clamp.
    # n is a hardness setting (an inverse temperature on how hard the drawn negative is), not
    # the embedding dimension: larger n draws harder negatives.
    n_dim: float = number(512.0, above=0)
    min_dist: float = number(0.5, min=0)
    # Anchors without a negative below the cutoff: "skip" them, or "zero" the direction (the reference).
    on_empty: str = choice("skip", "skip", "zero")
    # Normalise sampling log-weights over samplable negatives only; false: the reference, where one
    # negative far beyond the cutoff underflows its row's weights to 0 (then nothing is sampled).
    stable_weights: bool = True
    # Optimiser steps with the base loss only, before the relation module is switched on.
    graph_warmup_steps: int = number(8000, min=0)
    # Add L(v, t^) and L(v^, t) to L(v^, t^).
    cross_terms: bool = True
    reg_weight: float = number(10.0, min=0)
    kl_temperature: float = number(1.0, above=0)
    # Hinge only: epochs summing over negatives before the hardest negative.
    hinge_warmup_epochs: int = number(1, min=0)


def _pad_length(x: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - x.shape[1]
    if extra > 0:
        x = F.pad(x, (0, 0, 0, extra))
        mask = F.pad(mask, (0, extra), value=False)
    return x, mask


def _max_over_ranks(values: list[int], device: torch.device) -> list[int]:
    t = torch.tensor(values, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def pad_to_common_length(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero-pad the regions and tokens of this rank's share to the longest over all ranks (a
    no-op in one process): the padded slots that the "paper" fragment similarity scores, and
    the padded positions in BatchNorm statistics, are then those one process would see."""
    if not dist_utils.is_distributed() or dist_utils.world_size() == 1:
        return batch
    pairs = (("regions", "region_mask"), ("tokens", "token_mask"))
    longest = _max_over_ranks([batch[m].shape[1] for _, m in pairs], batch["region_mask"].device)
    out = dict(batch)
    for (x, m), n in zip(pairs, longest):
        out[x], out[m] = _pad_length(batch[x], batch[m], n)
    return out


def gather_tokens(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather padded token features ``[b, L, d]`` and masks ``[b, L]`` from every rank
    (no gradient), zero-padding them first to the longest ``L`` over ranks."""
    if not dist_utils.is_distributed() or dist_utils.world_size() == 1:
        return x, mask
    x, mask = _pad_length(x, mask, _max_over_ranks([x.shape[1]], x.device)[0])
    xs = dist_utils.gather_no_grad(x.contiguous())
    ms = dist_utils.gather_no_grad(mask.to(x.dtype).contiguous()) > 0.5
    return xs, ms


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every ``nn.Linear`` of ``module`` (HREM's
    reference initialises its whole image projection so)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class HREMCriterion(nn.Module):
    """The HREM training objective on the embeddings of a (global) batch (Fu et al., CVPR 2023).

    Input: L2-normalised ``v [B, d]``, ``t [B, d]``, ``image_ids [B]``, the fragment tokens
    ``regions [B, R, d]`` / ``region_mask`` and ``words [B, W, d]`` / ``word_mask``
    (pre-pooling, used without gradient), the :class:`StepState` and a base seed for negative
    sampling. Output: a dict with ``base_loss`` and, once ``state.step >=
    graph_warmup_steps``, ``graph_loss`` (the three relation-enhanced terms) and
    ``relation_kl_loss`` (``reg_weight * KL``), plus logged scalars.
    """

    def __init__(self, model: HREMModelOptions, loss: HREMLossOptions):
        super().__init__()
        self.opts = loss
        self.relation = InstanceRelation(
            embed_dim=model.embed_dim, num_heads=model.graph_heads, num_layers=model.graph_layers,
            dropout=model.graph_dropout, topk=model.topk, threshold=model.threshold, sigma=model.sigma,
            mask_weight=model.mask_weight, fragment_padding=model.fragment_padding,
            chunk_elements=model.chunk_elements)
        self.base_criterion = self._build(loss.base)
        self.graph_criterion = self._build(loss.graph)
        self.kl = RelevanceKLLoss(temperature=loss.kl_temperature, sigma=model.sigma)

    def _build(self, kind: str) -> nn.Module:
        """The criterion of ``loss.base`` / ``loss.graph``: "triplet" or "hinge"."""
        o = self.opts
        if kind == "hinge":
            return HingeLoss(margin=o.margin)
        return DistanceWeightedTripletLoss(margin=o.margin, cutoff=o.cutoff, n_dim=o.n_dim, min_dist=o.min_dist,
                                           on_empty=o.on_empty, stable_weights=o.stable_weights)

    def graph_on(self, state: StepState) -> bool:
        return state.step >= self.opts.graph_warmup_steps

    def pair_loss(self, criterion: nn.Module, v: torch.Tensor, t: torch.Tensor, ids: torch.Tensor,
                  state: StepState, seed: int) -> torch.Tensor:
        """One loss term in float32 (outside autocast: the sampling weights are sensitive)."""
        with fp32(v, t) as (v32, t32):
            if isinstance(criterion, HingeLoss):
                hardest = self.opts.max_violation and state.epoch >= self.opts.hinge_warmup_epochs
                return criterion(v32 @ t32.t(), max_violation=hardest, image_ids=ids if self.opts.id_mask else None)
            gen = torch.Generator(device=v.device)
            gen.manual_seed(seed % (1 << 63))
            return criterion(v32, t32, ids, generator=gen)

    def forward(self, v: torch.Tensor, t: torch.Tensor, image_ids: torch.Tensor, regions: torch.Tensor,
                region_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, state: StepState,
                seed: int = 0) -> dict[str, torch.Tensor]:
        step_seed = seed * 1_000_003 + 4 * state.step
        out = {"base_loss": self.pair_loss(self.base_criterion, v, t, image_ids, state, step_seed)}
        on = self.graph_on(state)
        out["graph_on"] = torch.tensor(float(on), device=v.device)
        if not on:
            return out
        v_hat, t_hat, graph = self.relation(v, t, regions, region_mask, words, word_mask)
        crit = self.graph_criterion
        total = self.pair_loss(crit, v_hat, t_hat, image_ids, state, step_seed + 3)
        if self.opts.cross_terms:
            total = total + self.pair_loss(crit, v, t_hat, image_ids, state, step_seed + 1)
            total = total + self.pair_loss(crit, v_hat, t, image_ids, state, step_seed + 2)
        kl = self.kl(graph.r_i2t, graph.r_t2i, v, t)
        out["graph_loss"] = total
        out["relation_kl_loss"] = self.opts.reg_weight * kl
        out["relation_kl"] = kl.detach()
        out["graph_density"] = graph.connect.float().mean().detach()
        return out


@register_method("hrem")
class HREM(Method):
    """HREM dual encoder with the instance-level relation loss (see the module docstring)."""

    ModelOptions = HREMModelOptions
    LossOptions = HREMLossOptions
    batch_keys = ("regions", "region_mask", "tokens", "token_mask", "image_ids")

    def __init__(self, model: HREMModelOptions, loss: HREMLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        if model.embed_dim % model.fragment_heads or model.embed_dim % model.graph_heads:
            raise ConfigError(f"model.embed_dim={model.embed_dim} must be divisible by fragment_heads and "
                              "graph_heads")
        self.encoders = VSEEncoders(VSEModelOptions(embed_dim=model.embed_dim, pooling="max2",
                                                    bn_over_padding=model.bn_over_padding,
                                                    text_head=model.text_head), dims)
        if model.image_init == "xavier":
            xavier_init_linears(self.encoders.image_proj)
        self.image_pool = FragmentPool(model.embed_dim, num_heads=model.fragment_heads, dropout=model.dropout,
                                       residual_weight=model.residual_weight, num_layers=model.fragment_layers)
        self.text_pool = FragmentPool(model.embed_dim, num_heads=model.fragment_heads, dropout=model.dropout,
                                      residual_weight=model.residual_weight, num_layers=model.fragment_layers)
        self.criterion = HREMCriterion(model, loss)
        self._seed: int | None = None

    # -- encoders ------------------------------------------------------------------------
    def image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected region features ``[B, R, d]`` (pre-pooling) and their mask."""
        mask = batch["region_mask"]
        return self.encoders.image_proj(batch["regions"], mask), mask

    def text_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected word features ``[B, W, d]`` (pre-pooling) and their mask."""
        tokens, mask = batch["tokens"], batch["token_mask"]
        proj = self.encoders.text_proj
        return (proj(tokens) if self.model_opts.text_head == "linear" else proj(tokens, mask)), mask

    def encode_images(self, batch):
        x, mask = self.image_tokens(batch)
        return F.normalize(self.image_pool(x, mask), dim=-1)

    def encode_texts(self, batch):
        x, mask = self.text_tokens(batch)
        return F.normalize(self.text_pool(x, mask), dim=-1)

    # -- training ------------------------------------------------------------------------
    def sampling_seed(self, device: torch.device) -> int:
        """Base seed of negative sampling: rank 0's torch seed, shared by every rank."""
        if self._seed is None:
            seed = torch.tensor([torch.initial_seed() % (1 << 62)], dtype=torch.long, device=device)
            if dist_utils.is_distributed():
                dist.broadcast(seed, src=0)
            self._seed = int(seed.item())
        return self._seed

    def training_step(self, batch, state: StepState):
        batch = pad_to_common_length(batch)  # DDP: the padded width one process would see
        regions, region_mask = self.image_tokens(batch)
        words, word_mask = self.text_tokens(batch)
        v = F.normalize(self.image_pool(regions, region_mask), dim=-1)
        t = F.normalize(self.text_pool(words, word_mask), dim=-1)
        v, t = dist_utils.gather_with_grad(v), dist_utils.gather_with_grad(t)
        ids = dist_utils.gather_no_grad(batch["image_ids"])
        if self.criterion.graph_on(state):
            regions, region_mask = gather_tokens(regions.detach(), region_mask)
            words, word_mask = gather_tokens(words.detach(), word_mask)
        return self.criterion(v, t, ids, regions, region_mask, words, word_mask, state,
                              seed=self.sampling_seed(v.device))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Encoders at ``lr``, the relation module (and any criterion parameter) at
        ``lr * graph_lr_factor``; weight decay on every parameter unless ``decay_all`` is off."""
        groups = []
        graph_lr = lr * self.model_opts.graph_lr_factor
        for params, group_lr in ((self._named(exclude="criterion."), lr), (self._named(only="criterion."), graph_lr)):
            if self.model_opts.decay_all:
                groups.append({"params": [p for _, p in params], "lr": group_lr, "weight_decay": weight_decay})
            else:
                decay = [p for n, p in params if p.ndim > 1 and not n.endswith(".bias")]
                no_decay = [p for n, p in params if not (p.ndim > 1 and not n.endswith(".bias"))]
                groups += [{"params": decay, "lr": group_lr, "weight_decay": weight_decay},
                           {"params": no_decay, "lr": group_lr, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _named(self, *, only: str | None = None, exclude: str | None = None) -> list[tuple[str, nn.Parameter]]:
        out = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if only is not None and not name.startswith(only):
                continue
            if exclude is not None and name.startswith(exclude):
                continue
            out.append((name, p))
        return out
