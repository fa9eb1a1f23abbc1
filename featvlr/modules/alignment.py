"""Token-level alignment scores between sets of region tokens and word tokens.

Messina et al., "Fine-grained Visual Textual Alignment for Cross-Modal Retrieval using
Transformer Encoders" (TERAN), ACM TOMM 2021; used again by Liu et al., "Efficient
Token-Guided Image-Text Retrieval with Consistent Multimodal Contrastive Training" (TGDT /
GLS), IEEE TIP 2023.

For an image ``b`` with L2-normalised region tokens ``v_r`` and a caption ``b'`` with word
tokens ``t_w`` the alignment matrix is ``A[r, w] = v_r . t_w``; the modes aggregate it:

=========  =============================================================================
mode       score
=========  =============================================================================
MrSw       ``sum_w max_r A[r, w]`` (max over regions, sum over words; TERAN's default,
           not length-normalised: longer captions score higher)
MwSr       ``sum_r max_w A[r, w]``
symm       ``MrSw + MwSr``
MrAVGw     ``MrSw / n_words``
sum        ``sum_{r, w} A[r, w]``
mean       ``sum_{r, w} A[r, w] / (n_regions * n_words)``
=========  =============================================================================

TERAN slicing (:func:`teran_slice`): image slot 0 (the zero "CLS" region) is dropped; for
text, position 0 ([CLS]) and the last two valid tokens ([SEP] and the last wordpiece,
usually the final period) are dropped, so a caption of ``L`` tokens keeps ``L - 3``
(``drop_last_wordpiece=False`` keeps the last wordpiece, for captions without a period).

Two forms: :func:`alignment_scores` scores every image against every caption, block by
block so that the ``[images, regions, captions, words]`` tensor stays under a budget;
:func:`grouped_alignment_scores` scores each query against its own candidate list in one
batched product (the shortlist re-rank of GLS). :class:`TokenAlignment` wraps both with the
slicing and a scale.

Masking differs from the peer code in one place: the peer code sets padded pairs to 0
*before* the max, so a row of an image with padded regions (or a caption with padded words
in ``MwSr``) is implicitly clamped at 0; here padded tokens never take part in a max or a
sum, and ``mean`` divides by the number of valid pairs rather than the padded size. With a
fixed number of regions per image (BUTD 36) and ``MrSw`` the two agree exactly.
"""
from __future__ import annotations

import torch
from torch import nn

ALIGNMENT_MODES = ("MrSw", "MwSr", "symm", "MrAVGw", "sum", "mean")


def slice_regions(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop image slot 0 (the zero/CLS region): ``[..., R + 1, d] -> [..., R, d]``."""
    return tokens[..., 1:, :], mask[..., 1:]


def slice_words(tokens: torch.Tensor, mask: torch.Tensor, *, drop_last_wordpiece: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the words of valid-first captions between [CLS] and [SEP], and (TERAN) drop the
    last wordpiece too, usually the final period: ``len - 3`` words (``len - 2`` without the
    drop). Returns ``[..., L - 3 (or 2), d]`` tokens and their mask."""
    cut = 3 if drop_last_wordpiece else 2
    keep = max(int(tokens.shape[-2]) - cut, 0)
    pos = torch.arange(1, 1 + keep, device=mask.device)
    return tokens[..., 1:1 + keep, :], pos < (mask.sum(-1, keepdim=True) - cut + 1)


def teran_slice(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor, *, drop_last_wordpiece: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TERAN's token selection on padded, valid-first sequences (any leading dims).

    Args:
        image_tokens: ``[..., R + 1, d]`` with slot 0 the zero/CLS region.
        image_mask: ``[..., R + 1]`` bool, True on valid slots (slot 0 included).
        text_tokens: ``[..., L, d]`` with [CLS] at position 0 and [SEP] last.
        text_mask: ``[..., L]`` bool, valid tokens first.
        drop_last_wordpiece: TERAN's ``len - 3`` (True) or only [CLS] and [SEP] (False).

    Returns:
        ``(image_tokens[..., 1:, :], image_mask[..., 1:], text_tokens[..., 1:L-2, :], text_mask')``
        where ``text_mask'`` keeps the ``len - 3`` words between [CLS] and the last wordpiece.
    """
    return (*slice_regions(image_tokens, image_mask),
            *slice_words(text_tokens, text_mask, drop_last_wordpiece=drop_last_wordpiece))


def _check_mode(mode: str) -> None:
    if mode not in ALIGNMENT_MODES:
        raise ValueError(f"unknown alignment mode {mode!r} (known: {', '.join(ALIGNMENT_MODES)})")


def _aggregate(a: torch.Tensor, rm: torch.Tensor, wm: torch.Tensor, mode: str) -> torch.Tensor:
    """Aggregate alignments ``a [X, R, Y, W]`` into ``[X, Y]``.

    ``rm`` (regions) broadcasts to ``[X, R, Y, 1]`` and ``wm`` (words) to ``[X, 1, Y, W]``.
    """
    neg = torch.finfo(a.dtype).min
    has_r = rm.any(1)  # [X|1, Y|1, 1]
    has_w = wm.any(3)  # [X|1, 1, Y|1]

    def max_regions_sum_words() -> torch.Tensor:
        best = a.masked_fill(~rm, neg).amax(1)  # [X, Y, W]
        return best.masked_fill(~wm[:, 0] | ~has_r, 0.0).sum(-1)

    def max_words_sum_regions() -> torch.Tensor:
        best = a.masked_fill(~wm, neg).amax(3)  # [X, R, Y]
        return best.masked_fill(~rm[..., 0] | ~has_w, 0.0).sum(1)

    if mode == "MrSw":
        return max_regions_sum_words()
    if mode == "MwSr":
        return max_words_sum_regions()
    if mode == "symm":
        return max_regions_sum_words() + max_words_sum_regions()
    n_words = wm.sum(3)[:, 0].to(a.dtype)  # [X|1, Y|1]
    if mode == "MrAVGw":
        return max_regions_sum_words() / n_words.clamp_min(1.0)
    total = a.masked_fill(~(rm & wm), 0.0).sum((1, 3))
    if mode == "sum":
        return total
    if mode == "mean":
        n_reg = rm.sum(1)[..., 0].to(a.dtype)  # [X|1, Y|1]
        return total / (n_reg * n_words).clamp_min(1.0)
    _check_mode(mode)
    raise AssertionError


def alignment_scores(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                     text_mask: torch.Tensor, *, mode: str = "MrSw", max_elements: int = 1 << 26) -> torch.Tensor:
    """``[Ni, Nt]`` alignment scores of every image against every caption (no slicing).

    The ``[ni, R, nt, W]`` alignment tensor of a block is kept under ``max_elements`` by
    splitting images and captions into blocks, so memory is bounded whatever the gallery
    size. Differentiable (the blocks are concatenated).
    """
    _check_mode(mode)
    ni, r, d = image_tokens.shape
    nt, w, _ = text_tokens.shape
    if ni == 0 or nt == 0 or w == 0 or r == 0:
        return image_tokens.new_zeros(ni, nt)
    text_tokens = text_tokens.to(image_tokens.dtype)
    per_pair = r * w
    # Texts per block: all of them when one image row fits, else as many as fit.
    t_block = max(1, min(nt, max_elements // per_pair))
    i_block = max(1, min(ni, max_elements // (per_pair * t_block)))
    rows = []
    for i0 in range(0, ni, i_block):
        img = image_tokens[i0:i0 + i_block]
        rm = image_mask[i0:i0 + i_block, :, None, None]
        flat_img = img.reshape(-1, d)
        cols = []
        for t0 in range(0, nt, t_block):
            txt = text_tokens[t0:t0 + t_block]
            a = (flat_img @ txt.reshape(-1, d).t()).view(img.shape[0], r, txt.shape[0], w)
            cols.append(_aggregate(a, rm, text_mask[None, None, t0:t0 + t_block], mode))
        rows.append(torch.cat(cols, 1) if len(cols) > 1 else cols[0])
    return torch.cat(rows, 0) if len(rows) > 1 else rows[0]


def grouped_alignment_scores(query_tokens: torch.Tensor, query_mask: torch.Tensor, cand_tokens: torch.Tensor,
                             cand_mask: torch.Tensor, *, queries: str = "images", mode: str = "MrSw") -> torch.Tensor:
    """``[q, k]`` alignment scores of each query against its own ``k`` candidates (no slicing).

    ``queries="images"``: query regions ``[q, R, d]`` against candidate captions
    ``[q, k, W, d]``; ``queries="texts"``: query captions ``[q, W, d]`` against candidate
    images ``[q, k, R, d]``. One batched product per call (the shortlist re-rank of GLS).
    """
    _check_mode(mode)
    q, k, s, d = cand_tokens.shape
    if q == 0 or k == 0 or s == 0 or query_tokens.shape[1] == 0:
        return query_tokens.new_zeros(q, k)
    cand_tokens = cand_tokens.to(query_tokens.dtype)
    if queries == "images":
        r = query_tokens.shape[1]
        a = torch.bmm(query_tokens, cand_tokens.reshape(q, k * s, d).transpose(1, 2)).view(q, r, k, s)
        return _aggregate(a, query_mask[:, :, None, None], cand_mask[:, None], mode)
    if queries == "texts":
        w = query_tokens.shape[1]
        a = torch.bmm(cand_tokens.reshape(q, k * s, d), query_tokens.transpose(1, 2)).view(q * k, s, 1, w)
        words = query_mask[:, None, :].expand(q, k, w).reshape(q * k, 1, 1, w)
        return _aggregate(a, cand_mask.reshape(q * k, s, 1, 1), words, mode).view(q, k)
    raise ValueError(f"queries must be 'images' or 'texts', got {queries!r}")


class TokenAlignment(nn.Module):
    """TERAN alignment score between token sets (see the module docstring for the modes).

    Input: image tokens ``[Ni, R + 1, d]`` (slot 0 the zero/CLS region) with mask
    ``[Ni, R + 1]``, caption tokens ``[Nt, L, d]`` ([CLS] first, [SEP] last) with mask
    ``[Nt, L]``; tokens are expected L2-normalised. Output: ``[Ni, Nt]`` scores, times
    ``scale`` (TGDT multiplies MrSw by 10; TERAN does not).

    With ``teran_slicing=False`` every valid token is used (inputs already sliced);
    ``drop_last_wordpiece=False`` keeps the last wordpiece before [SEP] (captions without a
    final period).

    Example::

        align = TokenAlignment(mode="MrSw", scale=10.0)
        s = align(v_tokens, v_mask, t_tokens, t_mask)   # [Ni, Nt]
        loss = HingeLoss(margin=0.2)(s, max_violation=True)
    """

    def __init__(self, *, mode: str = "MrSw", scale: float = 1.0, teran_slicing: bool = True,
                 drop_last_wordpiece: bool = True, max_elements: int = 1 << 26):
        super().__init__()
        _check_mode(mode)
        self.mode = mode
        self.scale = scale
        self.teran_slicing = teran_slicing
        self.drop_last_wordpiece = drop_last_wordpiece
        self.max_elements = max_elements

    def slice(self, image_tokens, image_mask, text_tokens, text_mask):
        """The tokens the score uses (TERAN slicing when on, else the inputs)."""
        if self.teran_slicing:
            return teran_slice(image_tokens, image_mask, text_tokens, text_mask,
                               drop_last_wordpiece=self.drop_last_wordpiece)
        return image_tokens, image_mask, text_tokens, text_mask

    def forward(self, image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        img, imask, txt, tmask = self.slice(image_tokens, image_mask, text_tokens, text_mask)
        scores = alignment_scores(img, imask, txt, tmask, mode=self.mode, max_elements=self.max_elements)
        return scores * self.scale if self.scale != 1.0 else scores

    def grouped(self, query_tokens: torch.Tensor, query_mask: torch.Tensor, cand_tokens: torch.Tensor,
                cand_mask: torch.Tensor, *, queries: str = "images") -> torch.Tensor:
        """``[q, k]`` scores of each query against its own candidates
        (:func:`grouped_alignment_scores`; queries are images or texts)."""
        if queries == "images":
            query_tokens, query_mask, cand_tokens, cand_mask = self.slice(query_tokens, query_mask,
                                                                          cand_tokens, cand_mask)
        else:
            cand_tokens, cand_mask, query_tokens, query_mask = self.slice(cand_tokens, cand_mask,
                                                                          query_tokens, query_mask)
        scores = grouped_alignment_scores(query_tokens, query_mask, cand_tokens, cand_mask, queries=queries,
                                          mode=self.mode)
        return scores * self.scale if self.scale != 1.0 else scores

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, scale={self.scale}, teran_slicing={self.teran_slicing}, "
                f"drop_last_wordpiece={self.drop_last_wordpiece}")
