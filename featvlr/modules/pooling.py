"""Pooling over variable-length sets of token features (regions or words).

All functions take ``x [B, L, D]`` and a boolean ``mask [B, L]`` (True on valid tokens);
every row has at least one valid token.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-dimension max over valid tokens."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def maxk_pool(x: torch.Tensor, mask: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Per-dimension mean of the ``k`` largest values over valid tokens (HREM's max-2 pooling,
    Fu et al., CVPR 2023). Rows with fewer than ``k`` valid tokens average what they have."""
    k = min(k, x.shape[1])
    top = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).topk(k, dim=1).values  # [B, k, D]
    valid = torch.arange(k, device=x.device).unsqueeze(0) < mask.sum(1, keepdim=True)  # [B, k]
    top = top.masked_fill(~valid.unsqueeze(-1), 0.0)
    return top.sum(1) / valid.sum(1, keepdim=True).to(x.dtype)


def positional_encoding_1d(d_model: int, length: int) -> torch.Tensor:
    """Sinusoidal encodings ``[length, d_model]`` (Vaswani et al. 2017), as GPO uses them."""
    pe = torch.zeros(length, d_model)
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class GPO(nn.Module):
    """Generalized Pooling Operator (Chen et al., "Learning the Best Pooling Strategy for Visual
    Semantic Embedding", CVPR 2021, VSE-infinity).

    The weights depend only on the sequence length: sinusoidal encodings of positions
    ``0..L-1`` go through a 1-layer bidirectional GRU (forward and backward outputs averaged)
    and a bias-free linear score; ``w = softmax(score / 0.1)`` over valid positions. Each
    feature dimension is sorted in descending order over the valid tokens and
    ``pooled_d = sum_k w_k * sorted_d[k]``: a learned weighting of order statistics (max, mean,
    top-k mean are special cases).

    Input ``x [B, L, D]``, ``mask [B, L]``; output ``[B, D]``. The GRU runs once per distinct
    length in the batch, not once per row.
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.d_pe = d_pe
        self.temperature = temperature
        self.gru = nn.GRU(d_pe, d_hidden, 1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)
        self._pe_cache: dict[int, torch.Tensor] = {}

    def _pe(self, length: int, device) -> torch.Tensor:
        pe = self._pe_cache.get(length)
        if pe is None:
            pe = self._pe_cache[length] = positional_encoding_1d(self.d_pe, length)
        return pe.to(device)

    def pool_weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """``[B, max_len, 1]`` pooling weights (0 beyond each row's length)."""
        uniq, inverse = torch.unique(lengths, return_inverse=True)
        n, longest = len(uniq), int(uniq.max())
        pe = self._pe(longest, lengths.device).unsqueeze(0).expand(n, longest, self.d_pe)
        pos = torch.arange(longest, device=lengths.device).unsqueeze(0)
        umask = pos < uniq.unsqueeze(1)  # [n, longest]
        pe = pe.masked_fill(~umask.unsqueeze(-1), 0.0)
        packed = nn.utils.rnn.pack_padded_sequence(pe, uniq.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=longest)
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2
        scores = self.linear(out).masked_fill(~umask.unsqueeze(-1), -10000.0)
        weights = torch.softmax(scores / self.temperature, dim=1)  # [n, longest, 1]
        if longest < max_len:
            weights = torch.cat([weights, weights.new_zeros(n, max_len - longest, 1)], dim=1)
        return weights[inverse][:, :max_len]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)
        max_len = int(lengths.max())
        x, mask = x[:, :max_len], mask[:, :max_len]
        weights = self.pool_weights(lengths, max_len).to(x.dtype)
        m = mask.unsqueeze(-1)
        sorted_x = x.masked_fill(~m, -10000.0).sort(dim=1, descending=True).values
        sorted_x = sorted_x.masked_fill(~m, 0.0)  # valid tokens sort to the front: mask is prefix-shaped
        return (sorted_x * weights).sum(1)
