"""Reusable model pieces: pooling, projection heads, relation and alignment modules."""
from featvlr.modules.heads import RegionProjection, TokenBatchNorm, xavier_linear
from featvlr.modules.pooling import GPO, masked_max, masked_mean, maxk_pool

__all__ = ["GPO", "RegionProjection", "TokenBatchNorm", "masked_max", "masked_mean", "maxk_pool", "xavier_linear"]
