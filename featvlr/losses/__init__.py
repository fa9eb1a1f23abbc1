"""Loss functions, each an ``nn.Module`` whose docstring cites its paper."""
from featvlr.losses.hinge import HingeLoss, positive_mask
from featvlr.losses.infonce import SoftIdInfoNCE, soft_cross_entropy, soft_id_targets

__all__ = ["HingeLoss", "SoftIdInfoNCE", "positive_mask", "soft_cross_entropy", "soft_id_targets"]
from featvlr.losses.mlcl import ComposedContrastiveLoss, MultiLevelContrastiveLoss, in_batch_cross_entropy  # noqa: E402

__all__ += ["ComposedContrastiveLoss", "MultiLevelContrastiveLoss", "in_batch_cross_entropy"]
from featvlr.losses.cmc import ConsistentMultimodalContrastiveLoss, intra_modal_consistency  # noqa: E402

__all__ += ["ConsistentMultimodalContrastiveLoss", "intra_modal_consistency"]
from featvlr.losses.relevance_kl import RelevanceKLLoss  # noqa: E402
from featvlr.losses.triplet import DistanceWeightedTripletLoss, distance_weights  # noqa: E402

__all__ += ["DistanceWeightedTripletLoss", "RelevanceKLLoss", "distance_weights"]
from featvlr.losses.distill import RepresentationDistillation, StructureDistillation, wasserstein_1d  # noqa: E402

__all__ += ["RepresentationDistillation", "StructureDistillation", "wasserstein_1d"]
from featvlr.losses.structure import (  # noqa: E402
    StructurePreservationLoss,
    relation_kl,
    relation_mae,
    relation_matrix,
    relation_mse,
)

__all__ += ["StructurePreservationLoss", "relation_kl", "relation_mae", "relation_matrix", "relation_mse"]
