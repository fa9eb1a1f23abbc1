"""Projection heads from frozen features to the joint embedding space."""
from __future__ import annotations

import torch
from torch import nn

from featvlr.core.distributed import world_size


def xavier_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with Xavier-uniform weights and zero bias (VSE++ / VSE-infinity init)."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the tokens of a padded batch ``[B, L, C]``.

    ``over_padding=True`` is the VSE-infinity / HREM code's behaviour: statistics include
    the zero-padded positions. ``False`` normalises with the statistics of valid tokens only
    (padding stays zero); this changes numbers when lengths vary (region dropout).
    """

    def __init__(self, channels: int, over_padding: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.over_padding = over_padding

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        if self.over_padding:
            return self._bn(x.reshape(b * length, c)).reshape(b, length, c)
        out = torch.zeros_like(x)
        out[mask] = self._bn(x[mask])
        return out

    def _bn(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and world_size() > 1:
            return synced_batch_norm(self.bn, x)
        return self.bn(x)


def synced_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm of ``x [n, C]`` with statistics over all ranks' rows.

    Differentiable all-reduces (``torch.distributed.nn``) make one step under DDP equal one
    step of a single process on the global batch, on CPU (gloo) as on GPU; ``SyncBatchNorm``
    supports GPUs only.
    """
    from torch.distributed.nn.functional import all_reduce

    n = x.new_tensor([float(x.shape[0])])
    torch.distributed.all_reduce(n)
    mean = all_reduce(x.sum(0)) / n
    var = all_reduce(((x - mean) ** 2).sum(0)) / n
    y = (x - mean) / torch.sqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
            bn.num_batches_tracked.add_(1)
    return y


class RegionProjection(nn.Module):
    """``Linear(D -> d)(r) + MLP(r)`` with ``MLP = Linear(D -> d/2) -> BN -> ReLU -> Linear(d/2 -> d)``.

    The "basic" precomp image encoder of VSE-infinity (Chen et al., CVPR 2021), reused by
    HREM (Fu et al., CVPR 2023). Xavier-uniform init on ``fc`` (as VSE-infinity's
    ``EncoderImageAggr``); the MLP keeps PyTorch's default init. Input regions
    ``[B, R, D]`` and mask ``[B, R]``; output ``[B, R, d]`` (un-normalised, pre-pooling).
    """

    def __init__(self, in_dim: int, embed_dim: int, *, bn_over_padding: bool = True):
        super().__init__()
        hidden = embed_dim // 2
        self.fc = xavier_linear(in_dim, embed_dim)
        self.mlp_in = nn.Linear(in_dim, hidden)
        self.bn = TokenBatchNorm(hidden, over_padding=bn_over_padding)
        self.mlp_out = nn.Linear(hidden, embed_dim)

    def forward(self, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.mlp_in(regions), mask))
        return self.fc(regions) + self.mlp_out(h)
