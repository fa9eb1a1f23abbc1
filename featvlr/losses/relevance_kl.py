"""KL regulariser that keeps HREM's learned cross-modal relevance close to embedding proximity."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.modules.precision import fp32


class RelevanceKLLoss(nn.Module):
    """The relevance regulariser of HREM (Fu et al., "Learning Semantic Relationship among
    Instances for Image-Text Matching", CVPR 2023).

    Input: the learned relevance ``r_i2t [B_img, B_txt]`` (image rows) and ``r_t2i
    [B_txt, B_img]`` (caption rows), and the embeddings ``v [B_img, d]``, ``t [B_txt, d]``.
    The guide ``G = exp(-||v_a - t_b|| / sigma)`` is detached; row-wise distributions
    ``P_R = softmax(R / T)`` and ``P_G = softmax(G / T)`` give

        ``L = KL(P_R(i2t) || P_G) + KL(P_R(t2i) || P_G^T)``

    each averaged over rows (``batchmean``) and scaled by ``T^2``. Output: a scalar whose
    gradient reaches only the relevance (the reference's ``kl_div(log P_G, P_R)`` order).

    Example::

        reg = RelevanceKLLoss(temperature=1.0, sigma=1.0)(r_i2t, r_t2i, v, t)
    """

    def __init__(self, *, temperature: float = 1.0, sigma: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.sigma = sigma

    def kl(self, guide: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """``KL(softmax(relevance / T) || softmax(guide / T))`` per row, batch-mean, times T^2."""
        tau = self.temperature
        log_p_guide = F.log_softmax(guide.float() / tau, dim=-1)
        p_rel = F.softmax(relevance.float() / tau, dim=-1)
        return F.kl_div(log_p_guide, p_rel, reduction="batchmean") * tau ** 2

    def forward(self, r_i2t: torch.Tensor, r_t2i: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with fp32(v, t) as (v32, t32):  # distances in float32
            guide = torch.exp(-torch.cdist(v32, t32) / self.sigma).detach()
        return self.kl(guide, r_i2t) + self.kl(guide.t(), r_t2i)
