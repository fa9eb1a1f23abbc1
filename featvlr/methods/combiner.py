"""``combiner``: the CLIP4Cir Combiner on frozen global features (composed retrieval baseline).

Baldrati et al., "Conditioned and composed image retrieval combining and partially
fine-tuning CLIP-based features", CVPR-W 2022 (code: ABaldrati/CLIP4Cir, stage 2: the
Combiner trained on frozen CLIP features).

Query: ``normalize(Combiner(I_ref, T))`` (:class:`~featvlr.modules.combiner.Combiner`).
Gallery: ``normalize(I)``, the frozen global image features. Loss:
``CE(100 q normalize(y)^T, arange(B))``, in-batch over the global batch, query -> target,
mean. The scale is fixed at 100 unless ``loss.learnable_scale``.

Batches are built by :mod:`featvlr.data.composed` (keys ``reference_image``,
``pooled_text``, ``target_image``, ``target_ids``; see there). When the text features and
the image features differ in size (e.g. CLIP images with sentence-transformers texts) a
learned ``Linear(Dt -> Dg)`` maps the text into the image space first (``model.text_adapter``;
with CLIP features on both sides it is the identity, as in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.errors import ConfigError
from featvlr.core.schema import choice, number
from featvlr.losses.mlcl import ComposedContrastiveLoss
from featvlr.methods.base import FeatureDims, Method, StepState
from featvlr.methods.registry import register_method
from featvlr.modules.combiner import Combiner


@dataclass
class ComposedModelOptions:
    """Model options of every Combiner-based composed method (``combiner``, ``mlcl``)."""

    # Combiner widths; 0 picks CLIP4Cir's ratios to the image feature size d (4 d and 8 d).
    projection_dim: int = number(0, min=0)
    hidden_dim: int = number(0, min=0)
    dropout: float = number(0.5, min=0, below=1)
    # Text -> image-space map: "auto" (identity when the sizes agree, else linear), "linear", "none".
    text_adapter: str = choice("auto", "auto", "linear", "none")
    # L2-normalise the frozen reference/text features before the Combiner (CLIP4Cir: off).
    normalize_inputs: bool = False


@dataclass
class CombinerModelOptions(ComposedModelOptions):
    """The Combiner's widths, text adapter and input normalisation; nothing more."""


@dataclass
class CombinerLossOptions:
    # Logit scale of the in-batch cross-entropy (CLIP4Cir: fixed 100).
    scale: float = number(100.0, above=0)
    learnable_scale: bool = False
    # Repeated targets in a batch are not negatives of each other (off: the papers' arange CE).
    mask_duplicate_targets: bool = False


def build_text_adapter(mode: str, text_dim: int, image_dim: int) -> nn.Module:
    """Identity when the text and image features share a space, else ``Linear(Dt -> Dg)``
    (``mode``: ``model.text_adapter``)."""
    if mode == "none" or (mode == "auto" and text_dim == image_dim):
        if text_dim != image_dim:
            raise ConfigError(f"model.text_adapter=none needs text and image features of one size, got "
                              f"{text_dim} and {image_dim}")
        return nn.Identity()
    return nn.Linear(text_dim, image_dim)


def composed_dims(dims: FeatureDims) -> tuple[int, int]:
    """``(image_dim, text_dim)`` of a composed cache; both must be known."""
    if not dims.global_dim or not dims.text_dim:
        raise ConfigError("composed methods need global image features and pooled text features in the cache "
                          f"(got global_dim={dims.global_dim}, text_dim={dims.text_dim})")
    return dims.global_dim, dims.text_dim


class ComposedMethod(Method):
    """Shared plumbing of composed methods: inputs, text adapter, gallery encoder."""

    task = "composed"
    batch_keys = ("reference_image", "pooled_text", "target_image", "target_ids")

    def _setup_inputs(self, model, dims: FeatureDims) -> int:
        image_dim, text_dim = composed_dims(dims)
        self.text_adapter = build_text_adapter(model.text_adapter, text_dim, image_dim)
        return image_dim

    def inputs(self, batch: dict[str, torch.Tensor], key: str = "reference_image"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(I, T)`` in the image space, float32, optionally L2-normalised."""
        image = batch[key].float()
        text = self.text_adapter(batch["pooled_text"].float())
        if self.model_opts.normalize_inputs:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return image, text

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float()
        return F.normalize(image, dim=-1) if self.model_opts.normalize_inputs else image

    def encode_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gallery: L2-normalised frozen global features ``[B, Dg]``."""
        return F.normalize(batch["global_image"].float(), dim=-1)


@register_method("combiner")
class CombinerMethod(ComposedMethod):
    """CLIP4Cir Combiner baseline (see the module docstring)."""

    ModelOptions = CombinerModelOptions
    LossOptions = CombinerLossOptions

    def __init__(self, model: CombinerModelOptions, loss: CombinerLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        d = self._setup_inputs(model, dims)
        self.combiner = Combiner(feature_dim=d, projection_dim=model.projection_dim, hidden_dim=model.hidden_dim,
                                 dropout=model.dropout)
        self.criterion = ComposedContrastiveLoss(scale=loss.scale, learnable=loss.learnable_scale,
                                                 mask_duplicate_targets=loss.mask_duplicate_targets)

    def encode_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.combiner(*self.inputs(batch))

    def training_step(self, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, torch.Tensor]:
        q = gather_with_grad(self.encode_queries(batch))
        y = gather_no_grad(batch["target_image"].float())
        ids = gather_no_grad(batch["target_ids"])
        out = {"contrastive_loss": self.criterion(q, y, ids)}
        if self.loss_opts.learnable_scale:
            out["scale"] = self.criterion.scale.detach()
        return out
