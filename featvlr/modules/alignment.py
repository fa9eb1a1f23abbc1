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
:func:`pair_alignment_scores` scores given (image, caption) pairs, grouped by image (the
shortlist re-rank of GLS). :class:`TokenAlignment` wraps both with the
slicing and a scale.

Scores are computed in float32 even under autocast (half-precision tokens are promoted;
float32 and float64 inputs are used as they are): at GLS's scale 10 a bf16 alignment sum
is off by tenths, the order of the margins between hardest negatives.

Masking differs from the peer code in one place: the peer code sets padded pairs to 0
*before* the max, so a row of an image with padded regions (or a caption with padded words
in ``MwSr``) is implicitly clamped at 0; here padded tokens never take part in a max or a
sum, and ``mean`` divides by the number of valid pairs rather than the padded size. With a
fixed number of regions per image (BUTD 36) and ``MrSw`` the two agree exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from featvlr.modules.precision import fp32

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


def _fill_masked_(a: torch.Tensor, rm: torch.Tensor, wm: torch.Tensor, mode: str) -> bool:
    """Write, in place, the value the reduction of ``mode`` needs into the masked entries of
    a freshly computed alignment tensor (the lowest float before a max, 0 before a sum), so
    that :func:`_aggregate` reads it as is instead of building a masked copy (the largest
    temporary of the score). ``a`` is ``[X, R, Y, W]`` (masks as in :func:`_aggregate`) or
    the ``[X * R, Y * W]`` product it is a view of (masks ``[X * R, 1]`` and ``[1, Y * W]``).
    Returns False, leaving ``a`` untouched, for ``symm``, which reads ``a`` twice.

    Under autograd, ``a`` must be the product itself (not a view of it): the in-place fill
    is then recorded like the masked copy it replaces, with the same values and gradients.
    On the CPU a mask that hides nothing (every region valid, as with BUTD's 36 regions and
    no region dropout) is not applied at all.
    """
    if mode in ("MrSw", "MrAVGw"):
        hide, value = ~rm, torch.finfo(a.dtype).min
    elif mode == "MwSr":
        hide, value = ~wm, torch.finfo(a.dtype).min
    elif mode in ("sum", "mean"):
        hide, value = ~(rm & wm), 0.0
    else:
        return False
    if a.device.type != "cpu" or bool(hide.any()):  # (the check would wait on an accelerator)
        a.masked_fill_(hide, value)
    return True


def _aggregate(a: torch.Tensor, rm: torch.Tensor, wm: torch.Tensor, mode: str, *, filled: bool = False
               ) -> torch.Tensor:
    """Aggregate alignments ``a [X, R, Y, W]`` into ``[X, Y]``.

    ``rm`` (regions) broadcasts to ``[X, R, Y, 1]`` and ``wm`` (words) to ``[X, 1, Y, W]``.
    ``filled``: :func:`_fill_masked_` already wrote the masked entries of ``a``.
    """
    neg = torch.finfo(a.dtype).min
    has_r = rm.any(1)  # [X|1, Y|1, 1]
    has_w = wm.any(3)  # [X|1, 1, Y|1]

    def max_regions_sum_words() -> torch.Tensor:
        best = (a if filled else a.masked_fill(~rm, neg)).amax(1)  # [X, Y, W]
        return best.masked_fill(~wm[:, 0] | ~has_r, 0.0).sum(-1)

    def max_words_sum_regions() -> torch.Tensor:
        best = (a if filled else a.masked_fill(~wm, neg)).amax(3)  # [X, R, Y]
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
    total = (a if filled else a.masked_fill(~(rm & wm), 0.0)).sum((1, 3))
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
    with fp32(image_tokens, text_tokens) as (images, texts):
        return _alignment_scores(images, image_mask, texts, text_mask, mode, max_elements)


def _alignment_scores(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                      text_mask: torch.Tensor, mode: str, max_elements: int) -> torch.Tensor:
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
            wm = text_mask[None, None, t0:t0 + t_block]
            a = flat_img @ txt.reshape(-1, d).t()  # [ni * R, nt * W]
            filled = _fill_masked_(a, rm.reshape(-1, 1), wm.reshape(1, -1), mode)
            a = a.view(img.shape[0], r, txt.shape[0], w)
            cols.append(_aggregate(a, rm, wm, mode, filled=filled))
        rows.append(torch.cat(cols, 1) if len(cols) > 1 else cols[0])
    return torch.cat(rows, 0) if len(rows) > 1 else rows[0]


def pair_alignment_scores(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                          text_mask: torch.Tensor, image_rows: torch.Tensor, text_rows: torch.Tensor, *,
                          mode: str = "MrSw", max_elements: int = 1 << 20) -> torch.Tensor:
    """``[P]`` alignment scores of the pairs ``(image_rows[p], text_rows[p])`` of two token
    sets ``[Ni, R, d]`` and ``[Nt, W, d]`` (no slicing); the shortlist re-rank of GLS.

    Pairs are grouped by image: each image's regions are multiplied with the words of all
    its paired captions at once, so only caption tokens are gathered (never a copy of the
    regions per pair). Groups are cut into pieces of at most ``max_elements // max(R * W,
    W * d)`` captions and pieces of similar size are batched together, which keeps every
    temporary (gathered words, alignment tensor) near ``max_elements`` entries.
    """
    _check_mode(mode)
    with fp32(image_tokens, text_tokens) as (images, texts):
        return _pair_alignment_scores(images, image_mask, texts, text_mask, image_rows, text_rows, mode, max_elements)


def _pair_alignment_scores(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                           text_mask: torch.Tensor, image_rows: torch.Tensor, text_rows: torch.Tensor, mode: str,
                           max_elements: int) -> torch.Tensor:
    p = image_rows.numel()
    out = torch.zeros(p, dtype=torch.float32, device=image_tokens.device)
    r, d = image_tokens.shape[1], image_tokens.shape[2]
    w = text_tokens.shape[1]
    if p == 0 or r == 0 or w == 0:
        return out
    dev = image_tokens.device
    image_rows, text_rows = image_rows.to(dev).reshape(-1), text_rows.to(dev).reshape(-1)
    per_pair = max(r * w, w * d)
    cap = max(1, max_elements // per_pair)
    order = torch.argsort(image_rows, stable=True)
    img_sorted = image_rows[order]
    new_image = torch.ones(p, dtype=torch.bool, device=dev)
    new_image[1:] = img_sorted[1:] != img_sorted[:-1]
    image_start = torch.cummax(torch.where(new_image, torch.arange(p, device=dev), 0), 0).values
    starts_piece = new_image | ((torch.arange(p, device=dev) - image_start) % cap == 0)
    piece_start = torch.nonzero(starts_piece).flatten()  # [G]
    counts = torch.diff(piece_start, append=torch.tensor([p], device=dev))
    by_size = torch.argsort(counts, descending=True, stable=True)
    counts_sorted = counts[by_size].tolist()
    g0 = 0
    while g0 < len(counts_sorted):
        m = counts_sorted[g0]
        n = max(1, max_elements // (m * per_pair))  # pieces of this size per batch
        sel = by_size[g0:g0 + n]
        slot = torch.arange(m, device=dev)
        valid = slot[None] < counts[sel][:, None]  # [g, m]
        pos = order[(piece_start[sel][:, None] + slot[None]).clamp(max=p - 1)]  # pair ids [g, m]
        t = text_rows[pos]
        words = text_tokens[t].to(image_tokens.dtype)  # [g, m, W, d]
        wmask = text_mask[t] & valid[..., None]
        img = image_rows[pos[:, 0]]
        a = torch.bmm(image_tokens[img], words.reshape(len(sel), m * w, d).transpose(1, 2)).view(len(sel), r, m, w)
        rm, wm = image_mask[img][:, :, None, None], wmask[:, None]
        filled = not a.requires_grad and _fill_masked_(a, rm, wm, mode)  # a view: in place only without autograd
        scores = _aggregate(a, rm, wm, mode, filled=filled)
        out[pos[valid]] = scores[valid].float()
        g0 += len(sel)
    return out


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

    def pairs(self, image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
              text_mask: torch.Tensor, image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        """``[P]`` scores of the pairs ``(image_rows[p], text_rows[p])`` (:func:`pair_alignment_scores`)."""
        img, imask, txt, tmask = self.slice(image_tokens, image_mask, text_tokens, text_mask)
        scores = pair_alignment_scores(img, imask, txt, tmask, image_rows, text_rows, mode=self.mode,
                                       max_elements=min(self.max_elements, 1 << 20))
        return scores * self.scale if self.scale != 1.0 else scores

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, scale={self.scale}, teran_slicing={self.teran_slicing}, "
                f"drop_last_wordpiece={self.drop_last_wordpiece}")
