"""Triplet loss with distance-weighted negative sampling."""
from __future__ import annotations

import torch
from torch import nn

from featvlr.losses.hinge import positive_mask


def distance_weights(sim: torch.Tensor, negatives: torch.Tensor, *, n_dim: float = 512.0, min_dist: float = 0.5,
                     cutoff: float = 1.7, stable: bool = True) -> torch.Tensor:
    """Row-normalised sampling weights of the negatives of every anchor (Wu et al. 2017).

    Args:
        sim: ``[A, N]`` cosine similarities of unit vectors (anchors x candidates).
        negatives: ``[A, N]`` bool, True where the candidate is a negative of the anchor.
        n_dim: the ``n`` of the inverse distance density ``q(d)`` on the unit sphere in
            ``R^n``; HREM keeps 512 whatever the real dimension.
        min_dist: distances are clamped to at least this (``q(d)`` blows up near 0).
        cutoff: negatives at distance ``>= cutoff`` get weight 0 (they give no loss).
        stable: subtract the row maximum of the log-weights over the samplable negatives
            only. ``False`` is the reference code, whose maximum also runs over negatives
            beyond the cutoff: ``q(d)^-1`` grows steeply towards ``d = 2``, so one far
            negative (cosine below about -0.6) underflows every other weight of its row to 0
            and the anchor cannot sample.

    Returns:
        ``[A, N]`` float32 weights, each row summing to 1, or to 0 where the anchor has no
        negative below the cutoff.
    """
    sim = sim.detach().float()
    dist = (2.0 - 2.0 * sim).clamp_min(0.0).sqrt().clamp_min(min_dist)
    log_w = (2.0 - n_dim) * dist.log() - ((n_dim - 3.0) / 2.0) * (1.0 - 0.25 * dist * dist).log()
    finite = torch.isfinite(log_w)
    samplable = negatives & (dist < cutoff) & finite
    if stable:
        log_w = log_w.masked_fill(~samplable, float("-inf"))
        top = log_w.amax(dim=1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = (log_w - top).exp()
    else:
        # Only negatives keep their log-weight; inf/nan (distance 2) become 0, as in the reference.
        log_w = torch.where(negatives & finite, log_w, torch.zeros_like(log_w))
        w = (log_w - log_w.amax(dim=1, keepdim=True)).exp() * samplable.float()
    return w / (w.sum(dim=1, keepdim=True) + 1e-20)


class DistanceWeightedTripletLoss(nn.Module):
    """Triplet loss with distance-weighted negative sampling (Wu et al., "Sampling Matters in
    Deep Embedding Learning", ICCV 2017), the default loss of HREM (Fu et al., "Learning
    Semantic Relationship among Instances for Image-Text Matching", CVPR 2023).

    Input: L2-normalised image embeddings ``v [B, d]``, caption embeddings ``t [B, d]`` and
    ``image_ids [B]``; row ``b`` of ``v`` and ``t`` is a matching pair. Items sharing an image
    id are positives (a repeated image in the batch is not a negative). For every direction
    (image anchors against captions, caption anchors against images) and every
    (anchor, positive) pair, one negative is drawn from :func:`distance_weights` and the pair
    contributes ``[margin + s_an - s_ap]_+``. Output: a scalar, **summed** over triplets and
    over both directions (the reference reduction).

    An anchor whose negatives are all beyond ``cutoff`` (or that has none) cannot sample.
    ``on_empty="skip"`` (default) drops only that anchor's triplets; ``"zero"`` reproduces
    the reference code, where one such anchor zeroes the whole direction. ``stable_weights``
    (default) normalises the log-weights over samplable negatives only; ``False`` is the
    reference's normalisation, which can underflow a whole row (see :func:`distance_weights`).
    ``stable_weights=False, on_empty="zero"`` is the reference loss.

    Pass a seeded ``torch.Generator`` (on the embeddings' device) to make sampling
    reproducible, e.g. identical on every rank under DDP.

    Example::

        loss_fn = DistanceWeightedTripletLoss(margin=0.2, cutoff=1.7)
        loss = loss_fn(v, t, image_ids, generator=torch.Generator().manual_seed(0))

    See also :class:`featvlr.losses.HingeLoss` (hardest negative instead of a sampled one).
    """

    def __init__(self, *, margin: float = 0.2, cutoff: float = 1.7, n_dim: float = 512.0, min_dist: float = 0.5,
                 on_empty: str = "skip", stable_weights: bool = True):
        super().__init__()
        if on_empty not in ("skip", "zero"):
            raise ValueError(f"on_empty must be 'skip' or 'zero', got {on_empty!r}")
        self.margin, self.cutoff, self.n_dim, self.min_dist = margin, cutoff, n_dim, min_dist
        self.on_empty = on_empty
        self.stable_weights = stable_weights

    def sample_negatives(self, sim: torch.Tensor, positives: torch.Tensor,
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Draw one negative per (anchor, positive) pair of ``sim [A, N]``.

        Returns ``(anchor, positive, negative, ok)`` index vectors over the pairs that could
        sample, and ``ok = False`` when some anchor could not (``on_empty="zero"`` then
        gives no loss for the direction).
        """
        w = distance_weights(sim, ~positives, n_dim=self.n_dim, min_dist=self.min_dist, cutoff=self.cutoff,
                             stable=self.stable_weights)
        anchor, pos = positives.nonzero(as_tuple=True)
        rows = w[anchor]
        can = rows.sum(1) > 0
        ok = bool(can.all())
        anchor, pos, rows = anchor[can], pos[can], rows[can]
        if rows.shape[0] == 0:
            neg = anchor.new_zeros(0)
        else:
            neg = torch.multinomial(rows, 1, generator=generator).squeeze(1)
        return anchor, pos, neg, ok

    def direction(self, sim: torch.Tensor, positives: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The summed loss of one direction; rows of ``sim`` are the anchors."""
        anchor, pos, neg, ok = self.sample_negatives(sim, positives, generator)
        if not ok and self.on_empty == "zero":
            return sim.sum() * 0.0
        return (self.margin + sim[anchor, neg] - sim[anchor, pos]).clamp_min(0).sum()

    def forward(self, v: torch.Tensor, t: torch.Tensor, image_ids: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        sim = v @ t.t()
        pos = positive_mask(image_ids, sim.shape[0], sim.device)
        return self.direction(sim, pos, generator) + self.direction(sim.t(), pos.t(), generator)
