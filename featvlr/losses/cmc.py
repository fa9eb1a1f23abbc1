"""The consistent multimodal contrastive (CMC) loss of TGDT / GLS."""
from __future__ import annotations

import torch
from torch import nn

from featvlr.losses.hinge import HingeLoss
from featvlr.modules.precision import fp32


def intra_modal_consistency(image_emb: torch.Tensor, text_emb: torch.Tensor, *, margin: float = 0.3) -> torch.Tensor:
    """``sum_j [ max_i |(g_t g_t^T)_ij - (g_v g_v^T)_ij| - margin ]_+``.

    For every column ``j`` of the two ``[B, B]`` intra-modal similarity matrices, the
    largest disagreement between the text-text and image-image similarities beyond
    ``margin``; summed over columns (the peer code's reduction).
    """
    with fp32(image_emb, text_emb) as (v, t):  # similarities in float32
        diff = (t @ t.t() - v @ v.t()).abs()
        return (diff.max(0).values - margin).clamp(min=0).sum()


class ConsistentMultimodalContrastiveLoss(nn.Module):
    """Consistent multimodal contrastive loss (Liu et al., "Efficient Token-Guided Image-Text
    Retrieval with Consistent Multimodal Contrastive Training", IEEE TIP 2023; TGDT / GLS).

    ``L = L_inter + intra_weight * L_intra`` on global embeddings:

    - ``L_inter``: the VSE++ hinge (:class:`~featvlr.losses.HingeLoss`) on ``g_v g_t^T``,
      hardest negative (``max_violation``) or sum over negatives, margin 0.2, summed over
      the batch; ``image_ids`` turns on the id mask (other captions of the same image are
      not negatives; the peer code masks only the diagonal).
    - ``L_intra`` (:func:`intra_modal_consistency`): the image-image and text-text
      similarity structures of the batch must agree up to ``intra_margin`` (0.3, hard-coded
      in the peer code) in every column.

    Input: L2-normalised ``image_emb [B, d]`` and ``text_emb [B, d]``, row ``k`` of each a
    positive pair (half-precision inputs are scored in float32, also under autocast).
    Output: a float32 (or float64) scalar; :meth:`terms` returns ``(L_inter, L_intra)`` apart.

    Related: :class:`~featvlr.losses.HingeLoss` (the inter-modal term alone).

    Example::

        cmc = ConsistentMultimodalContrastiveLoss(margin=0.2, intra_margin=0.3)
        loss = cmc(g_v, g_t, image_ids=ids)
    """

    def __init__(self, *, margin: float = 0.2, intra_margin: float = 0.3, intra_weight: float = 1.0):
        super().__init__()
        self.hinge = HingeLoss(margin=margin)
        self.intra_margin = intra_margin
        self.intra_weight = intra_weight

    def terms(self, image_emb: torch.Tensor, text_emb: torch.Tensor, *, max_violation: bool = True,
              image_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with fp32(image_emb, text_emb) as (v, t):  # scores in float32
            inter = self.hinge(v @ t.t(), max_violation=max_violation, image_ids=image_ids)
        intra = intra_modal_consistency(v, t, margin=self.intra_margin)  # one promotion for both terms
        return inter, intra

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, *, max_violation: bool = True,
                image_ids: torch.Tensor | None = None) -> torch.Tensor:
        inter, intra = self.terms(image_emb, text_emb, max_violation=max_violation, image_ids=image_ids)
        return inter + self.intra_weight * intra
