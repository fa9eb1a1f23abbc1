"""Reusable model pieces: pooling, projection heads, relation and alignment modules."""
from featvlr.modules.heads import RegionProjection, TokenBatchNorm, xavier_linear
from featvlr.modules.pooling import GPO, masked_max, masked_mean, maxk_pool

__all__ = ["GPO", "RegionProjection", "TokenBatchNorm", "masked_max", "masked_mean", "maxk_pool", "xavier_linear"]
from featvlr.modules.combiner import Combiner, CombinerLevels, MultiLevelCombiner  # noqa: E402

__all__ += ["Combiner", "CombinerLevels", "MultiLevelCombiner"]
from featvlr.modules.alignment import TokenAlignment, alignment_scores, pair_alignment_scores, teran_slice  # noqa: E402

__all__ += ["TokenAlignment", "alignment_scores", "pair_alignment_scores", "teran_slice"]
from featvlr.modules.fragment import FragmentPool  # noqa: E402
from featvlr.modules.relation import CrossModalRelevance, InstanceRelation, fragment_similarity  # noqa: E402

__all__ += ["CrossModalRelevance", "FragmentPool", "InstanceRelation", "fragment_similarity"]
