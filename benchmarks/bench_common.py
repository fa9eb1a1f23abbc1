"""What several benchmarks share: one training step of a method, as the trainer takes it."""
from __future__ import annotations

from collections.abc import Callable

import torch


def training_step(method: torch.nn.Module, optimizer: torch.optim.Optimizer, state, *, amp: bool = False,
                  clip: float | None = 2.0) -> Callable[[dict], None]:
    """A function running one step on a batch: forward (bf16 autocast when ``amp``), the sum of the
    ``*_loss`` outputs, backward, gradient clipping at ``clip`` (none when None) and the update."""
    device_type = next(method.parameters()).device.type

    def step(batch: dict) -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            out = method(batch, state)
        total = sum(v for k, v in out.items() if k.endswith("_loss"))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(method.parameters(), clip)
        optimizer.step()

    return step
