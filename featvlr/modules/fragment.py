"""Fragment-level interaction and pooling of HREM: max-k residual plus a transformer-mean branch."""
from __future__ import annotations

import torch
from torch import nn

from featvlr.modules.pooling import masked_mean, maxk_pool


class FragmentPool(nn.Module):
    """HREM's fragment-level relation modelling and aggregation (Fu et al., "Learning Semantic
    Relationship among Instances for Image-Text Matching", CVPR 2023).

    ``pooled = w * maxk(x, k) + (1 - w) * mean(Transformer(x))``: the residual branch is the
    per-dimension mean of the ``k`` (2) largest values over valid tokens; the fragment branch
    is a 1-layer post-norm ``nn.TransformerEncoder`` (d = embed, ``num_heads`` 16 heads,
    FFN = embed, dropout 0.1) with a key-padding mask, mean-pooled over valid tokens;
    ``residual_weight`` ``w`` is 0.8.

    Input: projected tokens ``x [B, L, d]`` (regions or words) and ``mask [B, L]`` (True on
    valid tokens). Output: ``[B, d]`` un-normalised embeddings.

    Example::

        pool = FragmentPool(1024, num_heads=16)
        emb = torch.nn.functional.normalize(pool(x, mask), dim=-1)
    """

    def __init__(self, embed_dim: int, *, num_heads: int = 16, ffn_dim: int | None = None, dropout: float = 0.1,
                 residual_weight: float = 0.8, k: int = 2, num_layers: int = 1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=ffn_dim or embed_dim,
                                           dropout=dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.residual_weight = residual_weight
        self.k = k

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        residual = maxk_pool(x, mask, self.k)
        if self.residual_weight >= 1.0:
            return residual
        fragments = self.transformer(x, src_key_padding_mask=~mask)
        return self.residual_weight * residual + (1.0 - self.residual_weight) * masked_mean(fragments, mask)
