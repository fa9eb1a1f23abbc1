"""Methods that fail on purpose on one DDP rank (imported by the ranks of test_bad_inputs).

``vse_fails_in_eval``: rank 0 raises while it evaluates the dev split; ``vse_fails_in_step``:
rank 1 raises in its third training step. Both are ``vse`` otherwise.
"""
from __future__ import annotations

import torch.distributed as dist

from featvlr.core.errors import FeatvlrError
from featvlr.methods import register_method
from featvlr.methods.vse import VSE


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@register_method("vse_fails_in_eval")
class FailsInEval(VSE):
    def encode_images(self, batch):
        if _rank() == 0:
            raise FeatvlrError("evaluation failed on purpose")
        return super().encode_images(batch)


@register_method("vse_fails_in_step")
class FailsInStep(VSE):
    def training_step(self, batch, state):
        if _rank() == 1 and state.step == 2:
            raise FeatvlrError("step failed on purpose")
        return super().training_step(batch, state)
