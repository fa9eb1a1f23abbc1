"""VSE building blocks against hand-computed cases and direct implementations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featvlr.data import pad_tokens
from featvlr.losses import HingeLoss, SoftIdInfoNCE
from featvlr.modules import GPO, maxk_pool
from featvlr.modules.pooling import positional_encoding_1d
from featvlr.training.trainer import lr_factor


def test_hinge_hand_computed():
    s = torch.tensor([[0.9, 0.5, 0.1],
                      [0.8, 0.6, 0.3],
                      [0.2, 0.7, 0.4]])
    m = 0.2
    # image anchors (rows): [m - s_ii + s_ic]_+ over c != i
    rows = [max(0, m - 0.9 + 0.5) + max(0, m - 0.9 + 0.1),
            max(0, m - 0.6 + 0.8) + max(0, m - 0.6 + 0.3),
            max(0, m - 0.4 + 0.2) + max(0, m - 0.4 + 0.7)]
    # caption anchors (columns): [m - s_cc + s_ic]_+ over i != c
    cols = [max(0, m - 0.9 + 0.8) + max(0, m - 0.9 + 0.2),
            max(0, m - 0.6 + 0.5) + max(0, m - 0.6 + 0.7),
            max(0, m - 0.4 + 0.1) + max(0, m - 0.4 + 0.3)]
    loss = HingeLoss(margin=m)
    assert loss(s, max_violation=False).item() == pytest.approx(sum(rows) + sum(cols), abs=1e-6)
    hard_rows = [max(0, m - 0.9 + 0.5), max(0, m - 0.6 + 0.8), max(0, m - 0.4 + 0.7)]
    hard_cols = [max(0, m - 0.9 + 0.8), max(0, m - 0.6 + 0.7), max(0, m - 0.4 + 0.3)]
    assert loss(s, max_violation=True).item() == pytest.approx(sum(hard_rows) + sum(hard_cols), abs=1e-6)


def test_hinge_id_mask_ignores_captions_of_the_same_image():
    s = torch.tensor([[0.9, 0.95, 0.1],
                      [0.95, 0.9, 0.1],
                      [0.1, 0.1, 0.9]])
    ids = torch.tensor([7, 7, 3])  # rows 0 and 1 are two captions of one image
    loss = HingeLoss(margin=0.2)
    with_mask = loss(s, max_violation=True, image_ids=ids).item()
    without = loss(s, max_violation=True).item()
    # Masked: the only negatives left score 0.1, so no violation at all.
    assert with_mask == pytest.approx(0.0, abs=1e-7)
    assert without == pytest.approx(4 * (0.2 - 0.9 + 0.95), abs=1e-6)


def test_soft_id_infonce_matches_definition():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(4, 5), dim=1)
    t = torch.nn.functional.normalize(torch.randn(4, 5), dim=1)
    ids = torch.tensor([0, 0, 1, 2])
    crit = SoftIdInfoNCE(temperature=0.1, learnable=False)
    logits = (v @ t.T / 0.1).double()
    y = (ids[:, None] == ids[None, :]).double()
    y = y / y.sum(1, keepdim=True)
    ref = 0.5 * (-(y * logits.log_softmax(1)).sum(1).mean() - (y.T * logits.T.log_softmax(1)).sum(1).mean())
    assert crit(v, t, ids).item() == pytest.approx(ref.item(), rel=1e-5)
    learn = SoftIdInfoNCE(temperature=100.0, learnable=True, tau_max=0.5)
    assert learn.tau.item() == pytest.approx(0.5)  # clamped


def gpo_direct(gpo: GPO, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """GPO by its definition, one row at a time."""
    out = []
    for row, n in zip(x, lengths):
        pe = positional_encoding_1d(gpo.d_pe, n).unsqueeze(0)
        h, _ = gpo.gru(pe)
        half = h.shape[-1] // 2
        h = (h[..., :half] + h[..., half:]) / 2
        w = torch.softmax(gpo.linear(h)[0, :, 0] / 0.1, dim=0)  # [n]
        sorted_vals = row[:n].sort(dim=0, descending=True).values  # [n, D], per dimension
        out.append((w[:, None] * sorted_vals).sum(0))
    return torch.stack(out)


def test_gpo_against_direct_definition():
    torch.manual_seed(0)
    gpo = GPO(32, 32)
    lengths = [5, 3, 5, 1, 4]
    x = torch.randn(5, 6, 7)
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    x = x * mask[..., None]
    got = gpo(x, mask)
    ref = gpo_direct(gpo, x, lengths)
    assert torch.allclose(got, ref, atol=1e-5)


def test_gpo_weights_depend_only_on_length():
    torch.manual_seed(1)
    gpo = GPO(32, 32)
    w = gpo.pool_weights(torch.tensor([4, 4, 2]), 4)
    assert torch.allclose(w[0], w[1])
    assert torch.allclose(w[2, 2:], torch.zeros(2, 1))
    assert torch.allclose(w.sum(1), torch.ones(3, 1), atol=1e-5)


def test_maxk_pool_direct():
    x = torch.tensor([[[1.0, 5.0], [3.0, 2.0], [2.0, 9.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, True, False]])  # the 100s are padding
    assert torch.allclose(maxk_pool(x, mask, 2), torch.tensor([[2.5, 7.0]]))
    one = torch.tensor([[True, False, False, False]])
    assert torch.allclose(maxk_pool(x, one, 2), torch.tensor([[1.0, 5.0]]))


def test_pad_tokens():
    seqs = [np.ones((2, 3)), 2 * np.ones((4, 3)), 3 * np.ones((1, 3))]
    out, mask = pad_tokens(seqs, 3)
    assert out.shape == (3, 4, 3)
    assert mask.sum(1).tolist() == [2, 4, 1]
    assert out[0, 2:].sum() == 0 and out[1].mean() == 2 and out[2, 0, 0] == 3
    out, mask = pad_tokens(seqs, 3, max_tokens=2)
    assert out.shape == (3, 2, 3) and mask.sum(1).tolist() == [2, 2, 1]


def test_lr_schedules():
    kw = dict(warmup_steps=0, steps_per_epoch=10, total_steps=100, lr_steps=[3, 6], lr_gamma=0.1)
    assert lr_factor(29, schedule="step", **kw) == pytest.approx(1.0)
    assert lr_factor(30, schedule="step", **kw) == pytest.approx(0.1)
    assert lr_factor(60, schedule="step", **kw) == pytest.approx(0.01)
    kw["warmup_steps"] = 10
    assert lr_factor(4, schedule="constant", **kw) == pytest.approx(0.5)
    assert lr_factor(55, schedule="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
