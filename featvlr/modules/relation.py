"""HREM's instance-level relation modelling: a transformer over all images and captions of a batch.

Fu et al., "Learning Semantic Relationship among Instances for Image-Text Matching", CVPR 2023.
The module is used only inside the training loss; test-time embeddings never see it.

Pieces, in the order the relation module runs them:

- :func:`fragment_similarity`: SCAN-like word-region matching of every (caption, image) pair
  of the batch, vectorised and chunked over captions, reduced to a mean score and the top-k
  scores per pair and direction.
- :class:`CrossModalRelevance`: the learned relevance ``MLP(top-k) + mean`` per direction.
- :func:`topk_connections`: the top-``threshold`` connection mask of each row.
- :func:`relation_attention_mask`: ``mask_weight * R`` on connections, ``-inf`` elsewhere.
- :class:`InstanceRelation`: all of the above plus the 1-layer transformer over the ``2B``
  embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FRAGMENT_PADDING = ("masked", "paper")


@dataclass
class FragmentScores:
    """Fragment-level similarity of every caption with every image of a batch.

    ``t2i_topk [B_txt, B_img, k]`` and ``t2i_mean [B_txt, B_img]`` (caption rows);
    ``i2t_topk [B_img, B_txt, k]`` and ``i2t_mean [B_img, B_txt]`` (image rows).
    """

    t2i_topk: torch.Tensor
    t2i_mean: torch.Tensor
    i2t_topk: torch.Tensor
    i2t_mean: torch.Tensor


def _masked_topk(x: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` of ``x`` along the last dim over ``valid`` entries; missing slots are 0."""
    kk = min(k, x.shape[-1])
    top = x.masked_fill(~valid, float("-inf")).topk(kk, dim=-1).values
    top = top.masked_fill(torch.isinf(top), 0.0)
    if kk < k:
        top = F.pad(top, (0, k - kk))
    return top


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    v = valid.to(x.dtype)
    return (x * v).sum(-1) / v.sum(-1).clamp_min(1.0)


@torch.no_grad()
def fragment_similarity(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                        region_mask: torch.Tensor, *, topk: int = 10, padding: str = "masked",
                        negative_slope: float = 0.1, chunk_elements: int = 1 << 25) -> FragmentScores:
    """SCAN-like fragment similarity between every caption and every image (no gradient).

    For caption ``j`` and image ``i`` with unit word vectors ``w`` and unit region vectors
    ``r``: ``A = LeakyReLU_0.1(w r^T)`` ``[W, R]``.

    - caption -> image: L2-normalise ``A`` over the word axis, max over regions per word;
      ``t2i_mean`` is the mean over the caption's words, ``t2i_topk`` its ``topk`` largest
      values.
    - image -> caption: L2-normalise ``A`` over the region axis, max over the caption's words
      per region; ``i2t_mean`` is the mean over regions, ``i2t_topk`` the ``topk`` largest.

    ``padding="masked"`` (default) uses valid words and regions only; a top-k over fewer than
    ``k`` valid values is completed with zeros. ``padding="paper"`` reproduces HREM's code:
    the caption's first ``max(len, topk)`` token slots (padding included) enter ``A``, its
    normalisation and the caption top-k, and every region slot (padding included, since
    the reference does not use image lengths) enters the max, mean and top-k.

    Args:
        words: ``[B_txt, W, d]`` projected word features (normalised here).
        word_mask: ``[B_txt, W]`` True on valid words.
        regions: ``[B_img, R, d]`` projected region features (normalised here).
        region_mask: ``[B_img, R]`` True on valid regions.
        topk: number of top scores kept per pair (10).
        chunk_elements: largest ``[chunk, B_img, W, R]`` block held at once.

    Returns:
        :class:`FragmentScores`.
    """
    if padding not in FRAGMENT_PADDING:
        raise ValueError(f"padding must be one of {FRAGMENT_PADDING}, got {padding!r}")
    n_txt, n_words, _ = words.shape
    n_img, n_reg, _ = regions.shape
    true_word = word_mask.bool()
    if padding == "paper":
        lengths = true_word.sum(1, keepdim=True)
        pos = torch.arange(n_words, device=words.device).unsqueeze(0)
        sel_word = pos < lengths.clamp_min(topk)
        reg = torch.ones_like(region_mask, dtype=torch.bool)
    else:
        sel_word, reg = true_word, region_mask.bool()
    words = F.normalize(words, dim=-1) * sel_word.unsqueeze(-1).to(words.dtype)
    regions = F.normalize(regions, dim=-1)
    if padding != "paper":  # "paper" keeps every region slot (x * 1.0 is x: skipped)
        regions = regions * reg.unsqueeze(-1).to(regions.dtype)

    chunk = max(1, chunk_elements // max(1, n_img * n_words * n_reg))
    out: dict[str, list[torch.Tensor]] = {"t2i_topk": [], "t2i_mean": [], "i2t_topk": [], "i2t_mean": []}
    reg_b = reg.view(1, n_img, 1, n_reg)
    for start in range(0, n_txt, chunk):
        w = words[start:start + chunk]
        c = w.shape[0]
        tw = true_word[start:start + chunk].view(c, 1, n_words)
        sw = sel_word[start:start + chunk].view(c, 1, n_words)
        # The [c, I, W, R] block is the large temporary: it is built once, every pass over it
        # runs in place (no gradient here), and a mask with nothing to hide is not applied.
        a = F.leaky_relu(torch.einsum("cwd,ird->ciwr", w, regions), negative_slope, inplace=True)
        # F.normalize's arithmetic (norm, clamp at 1e-12, divide), both norms taken from `a`.
        norm_w = a.norm(2, 2, keepdim=True).clamp_min(1e-12).expand_as(a)
        norm_r = a.norm(2, 3, keepdim=True).clamp_min(1e-12).expand_as(a)
        # caption -> image: normalise over words, best region per word
        row = a / norm_w
        if padding != "paper":  # "paper" keeps every region slot
            row.masked_fill_(~reg_b, float("-inf"))
        row = row.amax(dim=3)  # [c, I, W]
        row = row.masked_fill(torch.isinf(row), 0.0)
        out["t2i_mean"].append(_masked_mean(row, tw.expand_as(row)))
        out["t2i_topk"].append(_masked_topk(row, sw.expand_as(row), topk))
        # image -> caption: normalise over regions, best true word per region
        col = a.div_(norm_r).masked_fill_(~tw.unsqueeze(-1), float("-inf")).amax(dim=2)  # [c, I, R]
        del a, norm_w, norm_r
        col = col.masked_fill(torch.isinf(col), 0.0)  # a caption without valid words
        regs = reg.unsqueeze(0).expand_as(col)
        out["i2t_mean"].append(_masked_mean(col, regs))
        out["i2t_topk"].append(_masked_topk(col, regs, topk))
    cat = {k: torch.cat(v, dim=0) for k, v in out.items()}
    return FragmentScores(t2i_topk=cat["t2i_topk"], t2i_mean=cat["t2i_mean"],
                          i2t_topk=cat["i2t_topk"].transpose(0, 1).contiguous(),
                          i2t_mean=cat["i2t_mean"].t().contiguous())


class CrossModalRelevance(nn.Module):
    """HREM's learned cross-modal relevance (Fu et al., CVPR 2023): ``R = MLP(top-k) + mean``.

    One MLP per direction, ``Linear(k -> k) -> ReLU -> Linear(k -> 1)`` (PyTorch default init,
    as the reference). Input: :class:`FragmentScores`. Output: ``(r_t2i [B_txt, B_img],
    r_i2t [B_img, B_txt])``; gradients reach the MLPs only (the scores carry none).
    """

    def __init__(self, *, topk: int = 10, residual: bool = True):
        super().__init__()
        self.mlp_t2i = nn.Sequential(nn.Linear(topk, topk), nn.ReLU(), nn.Linear(topk, 1))
        self.mlp_i2t = nn.Sequential(nn.Linear(topk, topk), nn.ReLU(), nn.Linear(topk, 1))
        self.mlp_i2t.load_state_dict(self.mlp_t2i.state_dict())  # the reference deep-copies one MLP
        self.residual = residual

    def forward(self, scores: FragmentScores) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.mlp_t2i[0].weight.dtype
        r_t2i = self.mlp_t2i(scores.t2i_topk.to(dtype)).squeeze(-1)
        r_i2t = self.mlp_i2t(scores.i2t_topk.to(dtype)).squeeze(-1)
        if self.residual:
            r_t2i = r_t2i + scores.t2i_mean.to(r_t2i.dtype)
            r_i2t = r_i2t + scores.i2t_mean.to(r_i2t.dtype)
        return r_t2i, r_i2t


@torch.no_grad()
def topk_connections(scores: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``[N, M]`` bool: True where ``scores[a, b]`` is at least the ``floor(threshold * M)``-th
    largest value of row ``a`` (ties included; at least one connection per row)."""
    k = min(scores.shape[1], max(1, int(scores.shape[1] * threshold)))
    kth = scores.topk(k, dim=1).values[:, -1:]
    return scores >= kth


def relation_attention_mask(connect: torch.Tensor, relevance: torch.Tensor, mask_weight: float = 1.0
                            ) -> torch.Tensor:
    """Additive attention mask: ``mask_weight * relevance`` where connected, ``-inf`` elsewhere."""
    return (mask_weight * relevance).masked_fill(~connect, float("-inf"))


@dataclass
class BatchRelations:
    """The batch graph over ``2B`` nodes ordered ``[images; captions]``.

    ``connect`` ``[2B, 2B]`` bool, ``relevance`` ``[2B, 2B]``, ``attn_mask`` the additive
    mask given to the transformer; ``r_t2i`` / ``r_i2t`` the learned cross-modal relevance
    (for the KL regulariser).
    """

    connect: torch.Tensor
    relevance: torch.Tensor
    attn_mask: torch.Tensor
    r_t2i: torch.Tensor
    r_i2t: torch.Tensor


class InstanceRelation(nn.Module):
    """HREM's instance-level relation module (Fu et al., "Learning Semantic Relationship among
    Instances for Image-Text Matching", CVPR 2023; ``graph_lib.GraphLoss`` and ``lib/mca.py``
    of the reference code).

    Input: L2-normalised embeddings ``v [B, d]`` and ``t [B, d]`` of the (global) batch, and
    the fragment tokens (projected, pre-pooling; used without gradient) ``regions [B, R, d]``,
    ``region_mask [B, R]``, ``words [B, W, d]``, ``word_mask [B, W]``.

    1. Fragment similarity (:func:`fragment_similarity`) and learned cross-modal relevance
       (:class:`CrossModalRelevance`).
    2. Intra-modal relevance ``exp(-||a - b|| / sigma)`` (with gradient).
    3. Connections: the top-``threshold`` of each row of ``v v^T``, ``t t^T``, and of the
       fragment means (per caption over images, per image over captions).
    4. The additive mask ``mask_weight * R`` on connections, ``-inf`` elsewhere, over
       ``[images; captions]``.
    5. A ``num_layers``-layer post-norm transformer (``num_heads`` 16 heads, FFN = d,
       dropout 0.1) over the ``2B`` embeddings as one sequence.

    Output: ``(v_hat, t_hat, relations)``, the L2-normalised relation-enhanced embeddings
    and the :class:`BatchRelations`.

    Example::

        rel = InstanceRelation(embed_dim=1024)
        v_hat, t_hat, graph = rel(v, t, regions, region_mask, words, word_mask)
    """

    def __init__(self, *, embed_dim: int, num_heads: int = 16, num_layers: int = 1, dropout: float = 0.1,
                 topk: int = 10, threshold: float = 0.5, sigma: float = 1.0, mask_weight: float = 1.0,
                 fragment_padding: str = "masked", chunk_elements: int = 1 << 25):
        super().__init__()
        if fragment_padding not in FRAGMENT_PADDING:
            raise ValueError(f"fragment_padding must be one of {FRAGMENT_PADDING}, got {fragment_padding!r}")
        self.topk, self.threshold, self.sigma, self.mask_weight = topk, threshold, sigma, mask_weight
        self.fragment_padding = fragment_padding
        self.chunk_elements = chunk_elements
        self.relevance = CrossModalRelevance(topk=topk)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=embed_dim, dropout=dropout,
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)

    def relations(self, v: torch.Tensor, t: torch.Tensor, regions: torch.Tensor, region_mask: torch.Tensor,
                  words: torch.Tensor, word_mask: torch.Tensor) -> BatchRelations:
        """Connections, relevance and the attention mask of the batch graph."""
        scores = fragment_similarity(words.detach(), word_mask, regions.detach(), region_mask, topk=self.topk,
                                     padding=self.fragment_padding, chunk_elements=self.chunk_elements)
        r_t2i, r_i2t = self.relevance(scores)
        r_i2i = torch.exp(-torch.cdist(v, v) / self.sigma)
        r_t2t = torch.exp(-torch.cdist(t, t) / self.sigma)
        with torch.no_grad():
            vf, tf = v.float(), t.float()
            c_i2i = topk_connections(vf @ vf.t(), self.threshold)
            c_t2t = topk_connections(tf @ tf.t(), self.threshold)
            c_t2i = topk_connections(scores.t2i_mean.float(), self.threshold)
            c_i2t = topk_connections(scores.i2t_mean.float(), self.threshold)
        dtype = r_i2i.dtype
        relevance = torch.cat([torch.cat([r_i2i, r_i2t.to(dtype)], 1), torch.cat([r_t2i.to(dtype), r_t2t], 1)], 0)
        connect = torch.cat([torch.cat([c_i2i, c_i2t], 1), torch.cat([c_t2i, c_t2t], 1)], 0)
        return BatchRelations(connect=connect, relevance=relevance,
                              attn_mask=relation_attention_mask(connect, relevance, self.mask_weight),
                              r_t2i=r_t2i, r_i2t=r_i2t)

    def forward(self, v: torch.Tensor, t: torch.Tensor, regions: torch.Tensor, region_mask: torch.Tensor,
                words: torch.Tensor, word_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, BatchRelations]:
        graph = self.relations(v, t, regions, region_mask, words, word_mask)
        nodes = torch.cat([v, t], dim=0).unsqueeze(0)  # one sequence of 2B nodes
        out = self.transformer(nodes, mask=graph.attn_mask.to(nodes.dtype)).squeeze(0)
        v_hat, t_hat = out.split([v.shape[0], t.shape[0]], dim=0)
        return F.normalize(v_hat, dim=-1), F.normalize(t_hat, dim=-1), graph
