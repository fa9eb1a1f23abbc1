"""The VSE++ hinge (triplet ranking) loss."""
from __future__ import annotations

import torch
from torch import nn


def positive_mask(image_ids: torch.Tensor | None, n: int, device) -> torch.Tensor:
    """``[n, n]`` bool: True where row and column are a positive pair.

    With ``image_ids`` two items are positives when they share the image (the id mask);
    without, only the diagonal (VSE++).
    """
    if image_ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    return image_ids.unsqueeze(1) == image_ids.unsqueeze(0)


class HingeLoss(nn.Module):
    """VSE++ hinge loss (Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard
    Negatives", BMVC 2018), as used by VSE-infinity, TERAN, TGDT and HREM.

    Input: ``scores [B, B]`` where ``scores[i, j]`` is image i against caption j and the
    diagonal holds the positive pairs. For every image anchor the violations
    ``[margin - s(i,i) + s(i,c)]_+`` over negative captions c, and for every caption anchor
    ``[margin - s(c,c) + s(i,c)]_+`` over negative images i, are **summed** over negatives
    (VSE0) or reduced to the hardest negative (``max_violation``, VSE++), then summed over
    the batch (the peers' reduction: the effective learning rate depends on the batch size).

    ``image_ids`` (optional, ``[B]``) turns on the id mask: another caption of the same
    image is not a negative. Without it only the diagonal is masked (VSE++'s behaviour).

    Example::

        loss = HingeLoss(margin=0.2)(v @ t.T, max_violation=True, image_ids=ids)
    """

    def __init__(self, *, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, scores: torch.Tensor, *, max_violation: bool = True,
                image_ids: torch.Tensor | None = None) -> torch.Tensor:
        diagonal = scores.diag().unsqueeze(1)
        cost_caption = (self.margin + scores - diagonal).clamp(min=0)  # image anchors (rows)
        cost_image = (self.margin + scores - diagonal.t()).clamp(min=0)  # caption anchors (columns)
        pos = positive_mask(image_ids, scores.shape[0], scores.device)
        cost_caption = cost_caption.masked_fill(pos, 0)
        cost_image = cost_image.masked_fill(pos, 0)
        if max_violation:
            return cost_caption.max(1).values.sum() + cost_image.max(0).values.sum()
        return cost_caption.sum() + cost_image.sum()
