"""Option dataclasses shared by several methods' ``LossOptions``."""
from __future__ import annotations

from dataclasses import dataclass

from featvlr.core.schema import number


@dataclass
class HingeOptions:
    """Options of the VSE++ hinge (:class:`~featvlr.losses.HingeLoss`) for the methods that use it.

    A method's ``LossOptions`` inherits these fields (they come first in its ``loss:``
    section) and adds its own, among them its warm-up: the epochs that sum over negatives
    before the hardest one is taken (``warmup_epochs`` in ``vse`` and ``gls``,
    ``hinge_warmup_epochs`` in ``hrem``).
    """

    margin: float = number(0.2, min=0)
    # The hardest negative per positive pair (VSE++) after the warm-up; false: sum over negatives.
    max_violation: bool = True
    # Captions of the same image are not negatives (off reproduces VSE++, TERAN and TGDT).
    id_mask: bool = True
