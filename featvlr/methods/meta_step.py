"""Pieces of CoVLR's meta-learning step (:mod:`featvlr.methods.covlr`): batch halves, the
parameters that take the virtual step, the virtual step's scale, DDP helpers for the inner
gradient, and the meta gradient with its diagnostic against the plain structure gradient."""
from __future__ import annotations

import torch
from torch import nn

from featvlr.core import distributed as dist_utils
from featvlr.core.errors import ConfigError
from featvlr.losses import HingeLoss

# Parameter-name prefixes (relative to the towers) that the "heads" group selects.
HEAD_PREFIXES = ("image_proj.", "text_proj.")


def first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: True at the first position of every distinct id."""
    n = ids.shape[0]
    same = ids.unsqueeze(0) == ids.unsqueeze(1)  # [B, B]
    earlier = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril(-1)
    return ~(same & earlier).any(1)


def split_batch(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The first and the second half (along dim 0) of every tensor of a batch."""
    n = batch["image_ids"].shape[0]
    if n < 4:
        raise ConfigError(f"loss.meta_test_batch='split' needs at least 4 items per rank, got {n}")
    h = n // 2
    first, second = {}, {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n:
            first[k], second[k] = v[:h], v[h:]
        else:
            first[k] = second[k] = v
    return first, second


def select_virtual(names: list[str], spec: list[str]) -> list[str]:
    """Names of the parameters that take the virtual step (see ``virtual_params``)."""
    if not spec:
        raise ConfigError("loss.virtual_params is empty (use 'all', 'heads' or parameter-name prefixes)")
    chosen: list[str] = []
    for item in spec:
        if item == "all":
            hits = names
        elif item == "heads":
            hits = [n for n in names if n.startswith(HEAD_PREFIXES)]
        else:
            hits = [n for n in names if n == item or n.startswith(item.rstrip(".") + ".")]
        if not hits:
            raise ConfigError(f"loss.virtual_params: {item!r} matches no parameter "
                              f"(names: {', '.join(names)})")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in names if n in chosen]


def meta_gradient_loss(l_mt: torch.Tensor, plain: torch.Tensor | None, params: list[torch.Tensor], beta: float,
                       scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``beta * l_mt`` as a loss with the same value and the same gradient, and the logged
    cosine between that gradient (the meta gradient, ``l_mt`` being ``L_mt`` at theta') and the
    gradient of ``plain`` (``L_mt`` at theta, the plain structure term), with both norms.

    The meta gradient is taken here, once (one pass through the second-order graph, as the
    trainer's backward would take it), and handed on as ``sum_p p * g_p`` with its value
    replaced by ``beta * l_mt``. ``plain=None``: no virtual step, the two gradients are one.
    ``scale`` multiplies the losses before their gradients (float16 autocast) and is divided out.
    """
    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        out = torch.autograd.grad(loss * scale, params, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g / scale for p, g in zip(params, out)]

    meta = grads(l_mt)
    other = meta if plain is None else grads(plain)
    with torch.no_grad():
        flat_m = torch.cat([g.float().reshape(-1) for g in meta])
        flat_p = torch.cat([g.float().reshape(-1) for g in other])
        cosine = torch.nn.functional.cosine_similarity(flat_m, flat_p, dim=0)
    surrogate = sum((p * g.detach()).sum() for p, g in zip(params, meta))
    loss = beta * surrogate + (beta * l_mt.detach() - beta * surrogate.detach())
    return loss, {"meta_plain_cosine": cosine, "meta_grad_norm": flat_m.norm(), "plain_grad_norm": flat_p.norm()}


def anchor_count(criterion: nn.Module, batch: int) -> int:
    """Number of anchor terms the cross-modal loss sums: ``2 * batch`` for the hinge (each image
    and each caption of the global batch), 1 for InfoNCE (already a mean)."""
    return 2 * batch if isinstance(criterion, HingeLoss) else 1


def sum_sizes_before(n_local: int) -> int:
    """Row offset of this rank's slice in a gathered tensor (rank order, sizes all-gathered)."""
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist_utils.world_size())]
    dist.all_gather(sizes, torch.tensor([n_local], device=device))
    return int(sum(int(s.item()) for s in sizes[: dist_utils.rank()]))


def all_reduce_grads(grads: list[torch.Tensor], *, differentiable: bool) -> list[torch.Tensor]:
    """Sum a list of tensors over ranks in one flat all-reduce (differentiable if asked)."""
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    if differentiable:
        from torch.distributed.nn.functional import all_reduce

        flat = all_reduce(flat)
    else:
        flat = flat.clone()
        dist.all_reduce(flat)
    out, offset = [], 0
    for g in grads:
        out.append(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return out


__all__ = ["HEAD_PREFIXES", "all_reduce_grads", "anchor_count", "first_occurrence", "meta_gradient_loss",
           "select_virtual", "split_batch", "sum_sizes_before"]
