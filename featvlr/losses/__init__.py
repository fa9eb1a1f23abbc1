"""Loss functions, each an ``nn.Module`` whose docstring cites its paper."""
from featvlr.losses.hinge import HingeLoss, positive_mask
from featvlr.losses.infonce import SoftIdInfoNCE, soft_cross_entropy, soft_id_targets

__all__ = ["HingeLoss", "SoftIdInfoNCE", "positive_mask", "soft_cross_entropy", "soft_id_targets"]
