"""The CLIP4Cir Combiner and MLCL's multi-level Combiner (composed image retrieval heads).

Baldrati et al., "Effective conditioned and composed image retrieval combining CLIP-based
features", CVPR 2022 (demo) / "Conditioned and composed image retrieval combining and
partially fine-tuning CLIP-based features", CVPR-W 2022 (code: ABaldrati/CLIP4Cir);
Zhao et al., "Multi-level contrastive learning for hybrid cross-modal retrieval",
ICASSP 2024 (code: JWargrave/MLCL).

Both take a reference image feature ``I [B, d]`` and a modifier text feature ``T [B, d]``
(frozen, un-normalised, the same dimension) and return query vectors in the image space.
The queries are normalised in float32 even under autocast (:func:`unit`, that is
:func:`~featvlr.modules.precision.fp32_normalize`), so that the logits the losses build from
them (at scale 100) are float32 from float32 vectors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.modules.precision import fp32_normalize as unit


class Combiner(nn.Module):
    """CLIP4Cir Combiner: a gated residual fusion of an image and a text feature.

    ``t' = Drop(ReLU(W_t T))``, ``i' = Drop(ReLU(W_i I))``, ``z = [t'; i']``,
    ``h = Drop(ReLU(W_c z))``, ``lam = sigmoid(W_2 Drop(ReLU(W_1 z)))`` and
    ``out = W_o h + lam T + (1 - lam) I``. :meth:`forward` returns ``normalize(out)``.

    Layers keep PyTorch's default ``nn.Linear`` initialisation (as the reference code does).

    Args:
        feature_dim: ``d``, the dimension of ``I``, ``T`` and the output.
        projection_dim: ``p`` (0: ``4 d``, CLIP4Cir's 2560 for RN50x4).
        hidden_dim: the fusion width (0: ``8 d``, CLIP4Cir's 5120).
        dropout: dropout probability of every dropout layer (0.5 in the reference code).

    Example::

        comb = Combiner(feature_dim=640)
        q = comb(reference, text)            # [B, 640], unit norm
    """

    def __init__(self, *, feature_dim: int, projection_dim: int = 0, hidden_dim: int = 0, dropout: float = 0.5):
        super().__init__()
        projection_dim = projection_dim or 4 * feature_dim
        hidden_dim = hidden_dim or 8 * feature_dim
        self.feature_dim, self.projection_dim, self.hidden_dim = feature_dim, projection_dim, hidden_dim
        self.text_projection_layer = nn.Linear(feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(feature_dim, projection_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, feature_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                            nn.Linear(hidden_dim, 1), nn.Sigmoid())

    # -- pieces (MLCL reuses them) ------------------------------------------------------
    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        """``t' = Drop(ReLU(W_t T))`` ``[B, p]``."""
        return self.dropout1(F.relu(self.text_projection_layer(text)))

    def project_image(self, image: torch.Tensor) -> torch.Tensor:
        """``i' = Drop(ReLU(W_i I))`` ``[B, p]``; each call draws its own dropout mask."""
        return self.dropout2(F.relu(self.image_projection_layer(image)))

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """``h = Drop(ReLU(W_c z))`` ``[B, hidden]``."""
        return self.dropout3(F.relu(self.combiner_layer(z)))

    def fuse(self, image: torch.Tensor, text: torch.Tensor, z: torch.Tensor, h: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised ``out = W_o h + lam T + (1 - lam) I`` and ``lam [B, 1]``."""
        lam = self.dynamic_scalar(z)
        return self.output_layer(h) + lam * text + (1 - lam) * image, lam

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        z = torch.cat((self.project_text(text), self.project_image(image)), -1)
        out, _ = self.fuse(image, text, z, self.hidden(z))
        return unit(out)


@dataclass
class CombinerLevels:
    """The three MLCL query levels and the SSCL views (all ``[B, .]``).

    ``low``, ``mid``, ``high`` are unit-norm queries in the image space; ``z`` is the raw
    concatenation ``[t'; i']`` (un-normalised); ``z_aug`` and ``high_aug`` are the same for
    the augmented reference (None without one); ``lam`` is the high level's gate.
    """

    low: torch.Tensor
    mid: torch.Tensor
    high: torch.Tensor
    z: torch.Tensor
    lam: torch.Tensor
    z_aug: torch.Tensor | None = None
    high_aug: torch.Tensor | None = None


# How the learned branch weight enters the inference-time query (see MultiLevelCombiner).
INFERENCE_WEIGHTINGS = ("matched", "swapped", "equal")


class MultiLevelCombiner(Combiner):
    """MLCL's multi-level Combiner: three query levels over the CLIP4Cir layers.

    - low ("SimSum"): ``f_s = normalize(I + T)`` (no parameters);
    - mid ("CatCombined"): ``f_c = normalize(W_m h)`` with ``W_m: hidden -> d``;
    - high ("HybridFusion"): ``f_h = normalize(W_o h + lam T + (1 - lam) I)`` (CLIP4Cir).

    With an augmented reference ``I_aug`` the same text projection ``t'`` (same dropout
    mask) is paired with ``Drop(ReLU(W_i I_aug))`` into ``z_aug``, which gives ``h_aug`` and
    ``f_h,aug`` with its own gate ``lam(z_aug)`` (the SSCL views).

    The learned branch weight is ``w = 2 sigmoid(b)`` with ``b`` initialised to ``log 0.5``
    (``w = 2/3``). Training weighs the high-level loss by ``w`` and the mid-level loss by
    ``2 - w``. :meth:`query` builds the inference query
    ``normalize(a_h f_h + a_c f_c + f_s)`` where ``(a_h, a_c)`` is ``(w, 2 - w)`` for
    ``"matched"`` (the training weights), ``(2 - w, w)`` for ``"swapped"`` (the reference
    code's ``combine_features_weighted``) and ``(1, 1)`` for ``"equal"``.

    Input: ``image [B, d]``, ``text [B, d]``, optional ``image_aug [B, d]``.
    Output of :meth:`levels`: :class:`CombinerLevels`; of :meth:`query`: ``[B, d]`` unit norm.
    """

    def __init__(self, *, feature_dim: int, projection_dim: int = 0, hidden_dim: int = 0, dropout: float = 0.5,
                 branch_init: float = 0.5):
        super().__init__(feature_dim=feature_dim, projection_dim=projection_dim, hidden_dim=hidden_dim,
                         dropout=dropout)
        self.combiner_proj = nn.Linear(self.hidden_dim, feature_dim)
        self.branch_logit = nn.Parameter(torch.tensor([math.log(branch_init)]))

    def branch_weight(self) -> torch.Tensor:
        """``w = 2 sigmoid(b)`` in ``(0, 2)``, shape ``[1]``."""
        return 2 * torch.sigmoid(self.branch_logit)

    def levels(self, image: torch.Tensor, text: torch.Tensor, image_aug: torch.Tensor | None = None
               ) -> CombinerLevels:
        low = unit(image + text)
        t_proj = self.project_text(text)
        z = torch.cat((t_proj, self.project_image(image)), -1)
        h = self.hidden(z)
        mid = unit(self.combiner_proj(F.relu(h)))
        out, lam = self.fuse(image, text, z, h)
        levels = CombinerLevels(low=low, mid=mid, high=unit(out), z=z, lam=lam)
        if image_aug is not None:
            z_aug = torch.cat((t_proj, self.project_image(image_aug)), -1)
            out_aug, _ = self.fuse(image_aug, text, z_aug, self.hidden(z_aug))
            levels.z_aug = z_aug
            levels.high_aug = unit(out_aug)
        return levels

    def combine(self, levels: CombinerLevels, weighting: str = "matched") -> torch.Tensor:
        """Inference query from the levels (see the class docstring)."""
        w = self.branch_weight().to(levels.high.dtype)
        if weighting == "matched":
            a_h, a_c = w, 2 - w
        elif weighting == "swapped":
            a_h, a_c = 2 - w, w
        elif weighting == "equal":
            a_h = a_c = torch.ones_like(w)
        else:
            raise ValueError(f"unknown weighting {weighting!r} (one of {', '.join(INFERENCE_WEIGHTINGS)})")
        return unit(a_h * levels.high + a_c * levels.mid + levels.low)

    def query(self, image: torch.Tensor, text: torch.Tensor, weighting: str = "matched") -> torch.Tensor:
        return self.combine(self.levels(image, text), weighting)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.query(image, text)
