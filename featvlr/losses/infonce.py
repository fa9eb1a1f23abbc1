"""InfoNCE with soft image-id targets and a learnable, clamped temperature."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.modules.precision import fp32


def soft_id_targets(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """``y[i, j] = 1[id_i = id_j] / sum_j 1[id_i = id_j]`` (X-VLM ITC targets)."""
    same = (row_ids.unsqueeze(1) == col_ids.unsqueeze(0)).float()
    return same / same.sum(1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j y_ij log softmax(logits)_ij``."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


class ClampedTemperature(nn.Module):
    """A temperature ``tau`` stored as ``log_tau``, learnable or fixed, clamped to
    ``[tau_min, tau_max]`` so that a loss cannot shrink by running it away."""

    def __init__(self, *, temperature: float = 0.07, learnable: bool = True,
                 tau_min: float = 0.01, tau_max: float = 0.5):
        super().__init__()
        self.tau_min, self.tau_max = tau_min, tau_max
        log_tau = torch.tensor(math.log(temperature))
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.tau_min, self.tau_max)


class SoftIdInfoNCE(ClampedTemperature):
    """Image-text contrastive loss with soft image-id targets (X-VLM's ITC, Zeng et al.,
    ICML 2022, as used by CoVLR and RVLR).

    Input: L2-normalised ``v [B, d]`` and ``t [B, d]`` and ``image_ids [B]``.
    ``logits = v t^T / tau``; the targets spread the probability evenly over the captions
    (images) that share the image id; ``L = (CE_soft(rows) + CE_soft(columns)) / 2``, mean
    over the batch. ``tau`` starts at ``temperature`` and is learnable when ``learnable``;
    unlike X-VLM it is clamped to ``[tau_min, tau_max]`` so it cannot run away.
    """

    def forward(self, v: torch.Tensor, t: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        with fp32(v, t) as (v32, t32):  # logits in float32
            logits = v32 @ t32.t() / self.tau
            targets = soft_id_targets(image_ids, image_ids)
            return (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.t(), targets.t())) / 2
