"""torch.distributed helpers: process-group setup from torchrun's environment, and gathers.

Launch::

    torchrun --nproc_per_node 2 -m featvlr.cli train --config configs/f30k_vse.yaml

``gather_with_grad`` concatenates a tensor from every rank in rank order and keeps the
gradient path to the local slice, so in-batch contrastive and batch-graph losses see the
global batch (as the papers' all-gather does).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    nccl on CUDA, gloo on CPU. Returns True when running distributed.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.n = x.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        sizes_i = [int(s.item()) for s in sizes]
        ctx.sizes = sizes_i
        biggest = max(sizes_i)
        padded = x.new_zeros((biggest,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        out = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(out, padded.contiguous())
        return torch.cat([o[:s] for o, s in zip(out, sizes_i)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computes the same global loss on its copy; the gradient of the sum of
        # the rank losses w.r.t. the local slice is the all-reduced gradient. DDP then
        # averages parameter gradients over ranks, which undoes the factor world_size.
        # A differentiable all-reduce keeps second-order gradients (CoVLR's meta step) exact.
        from torch.distributed.nn.functional import all_reduce

        grad = all_reduce(grad.contiguous())
        start = sum(ctx.sizes[: rank()])
        return grad[start: start + ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 (rank order), differentiable for the local part."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without a gradient path (ids, masks, teacher features)."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()
