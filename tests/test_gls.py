"""GLS / TGDT: alignment modes against a direct loop, the CMC loss, the frozen stage 1, one
command training both stages, and the G / L / GL evaluation modes through the evaluator."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic import write_synthetic_cache

from featvlr.config import load_config
from featvlr.evaluation.scenarios import evaluate_cross_modal
from featvlr.inference.loading import load_method
from featvlr.losses import ConsistentMultimodalContrastiveLoss, HingeLoss
from featvlr.methods.base import FeatureDims, StepState
from featvlr.methods.gls import GLS, GLSLossOptions, GLSModelOptions
from featvlr.modules.alignment import ALIGNMENT_MODES, TokenAlignment
from featvlr.retrieval import (
    EmbeddingScores,
    PairwiseScores,
    ShortlistRerankScores,
    ranks,
)
from featvlr.training.trainer import train

DIMS = FeatureDims(region_dim=12, n_regions=5, text_dim=10)


def _padded(lengths, width, dim, gen):
    x = F.normalize(torch.randn(len(lengths), width, dim, generator=gen), dim=-1)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return x.masked_fill(~mask[..., None], 100.0), mask  # loud padding: it must never count


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    img, imask = _padded([6, 4, 2], 6, 8, g)  # slot 0 included
    txt, tmask = _padded([8, 5, 4, 3], 8, 8, g)  # [CLS] ... [SEP]; 3 tokens leave no word
    return img, imask, txt, tmask


def _loop_score(img, ilen, txt, tlen, mode, cut=3):
    regions = [img[r] for r in range(1, ilen)]
    words = [txt[w] for w in range(1, tlen - cut + 1)]  # drop [CLS], the last wordpiece (cut=3) and [SEP]
    a = [[float(r @ w) for w in words] for r in regions]
    mrsw = sum(max(a[r][w] for r in range(len(regions))) for w in range(len(words))) if regions else 0.0
    mwsr = sum(max(a[r]) for r in range(len(regions))) if words else 0.0
    total = sum(sum(row) for row in a)
    return {"MrSw": mrsw, "MwSr": mwsr, "symm": mrsw + mwsr, "MrAVGw": mrsw / max(1, len(words)),
            "sum": total, "mean": total / max(1, len(regions) * len(words))}[mode]


@pytest.mark.parametrize("mode", ALIGNMENT_MODES)
def test_alignment_modes_match_a_direct_loop(mode):
    img, imask, txt, tmask = _toy()
    ilen, tlen = imask.sum(1).tolist(), tmask.sum(1).tolist()
    expected = torch.tensor([[_loop_score(img[i], ilen[i], txt[t], tlen[t], mode) for t in range(len(tlen))]
                             for i in range(len(ilen))])
    for max_elements in (1 << 20, 7):  # one block, and many tiny blocks
        got = TokenAlignment(mode=mode, max_elements=max_elements)(img, imask, txt, tmask)
        assert torch.allclose(got, expected, atol=1e-5), (mode, max_elements)
    assert torch.allclose(TokenAlignment(mode=mode, scale=10.0)(img, imask, txt, tmask), 10 * expected, atol=1e-4)
    keep_last = torch.tensor([[_loop_score(img[i], ilen[i], txt[t], tlen[t], mode, cut=2) for t in range(len(tlen))]
                              for i in range(len(ilen))])
    got = TokenAlignment(mode=mode, drop_last_wordpiece=False)(img, imask, txt, tmask)
    assert torch.allclose(got, keep_last, atol=1e-5)
    # Given pairs (the shortlist form, grouped by image) give the same entries, in any order;
    # a tiny budget cuts each image's pairs into many pieces.
    pi = torch.tensor([2, 0, 1, 0, 0, 2, 1, 0, 2])
    pt = torch.tensor([3, 0, 1, 1, 3, 0, 1, 2, 2])
    for budget in (1 << 20, 1):
        align = TokenAlignment(mode=mode, max_elements=budget)
        assert torch.allclose(align.pairs(img, imask, txt, tmask, pi, pt), expected[pi, pt], atol=1e-5)


def test_mrsw_is_not_length_normalised():
    img, imask, txt, tmask = _toy(1)
    tok = txt[:1].clone()
    tok[0, 1:5] = img[0, 1]  # the same word repeated: every word's best region is 1.0
    s = TokenAlignment()(img[:1], imask[:1], tok, tmask[:1])  # length 8 -> 5 words
    assert torch.allclose(s, torch.tensor([[4.0 + float((img[0, 1:6] @ tok[0, 5]).max())]]), atol=1e-5)


def test_cmc_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    cmc = ConsistentMultimodalContrastiveLoss(margin=0.2, intra_margin=0.3)
    inter, intra = cmc.terms(v, t)
    assert torch.allclose(inter, HingeLoss(margin=0.2)(v @ t.t(), max_violation=True))
    tt, vv = (t @ t.t()).tolist(), (v @ v.t()).tolist()
    expected = sum(max(0.0, max(abs(tt[i][j] - vv[i][j]) for i in range(6)) - 0.3) for j in range(6))
    assert abs(float(intra) - expected) < 1e-5
    assert torch.allclose(cmc(v, t), inter + intra)
    assert float(cmc.terms(v, v)[1]) == 0.0  # identical structures: no intra-modal cost


def _opts(**kw) -> GLSModelOptions:
    base = {"embed_dim": 16, "layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.1}
    base.update(kw)
    return GLSModelOptions(**base)


def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rl = torch.tensor([5, 3, 4, 5, 2, 5][:b])
    tl = torch.tensor([7, 5, 6, 4, 7, 5][:b])
    rmask = torch.arange(5)[None] < rl[:, None]
    tmask = torch.arange(7)[None] < tl[:, None]
    return {"regions": torch.randn(b, 5, 12, generator=g) * rmask[..., None],
            "region_mask": rmask, "tokens": torch.randn(b, 7, 10, generator=g) * tmask[..., None],
            "token_mask": tmask, "image_ids": torch.tensor([0, 1, 2, 3, 0, 4][:b])}


def test_stage_two_leaves_stage_one_untouched():
    torch.manual_seed(0)
    m = GLS(_opts(stage=2), GLSLossOptions(), DIMS)
    m.stage1_ready.fill_(True)  # as if loaded from a stage-1 run
    m.train()
    assert not m.stage1.training and m.stage2.training  # frozen stage 1: no dropout either
    before1 = {k: v.clone() for k, v in m.stage1.state_dict().items()}
    before2 = {k: v.clone() for k, v in m.stage2.state_dict().items()}
    opt = torch.optim.AdamW(m.param_groups(1e-2, 1e-4))
    out = m.training_step(_batch(), StepState())
    assert {"matching_loss", "alignment_loss"} <= set(out) and float(out["intra"]) >= 0
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    opt.step()
    assert all(p.grad is None for p in m.stage1.parameters())
    assert all(torch.equal(before1[k], v) for k, v in m.stage1.state_dict().items())
    assert any(not torch.equal(before2[k], v) for k, v in m.stage2.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.stage2.parameters())


def test_stage_one_trains_its_tokens_and_stage_two_needs_one():
    torch.manual_seed(0)
    m1 = GLS(_opts(stage=1, eval_mode="L"), GLSLossOptions(), DIMS)
    out = m1.training_step(_batch(), StepState())
    out["alignment_loss"].backward()
    assert all(p.grad is not None for p in m1.stage1.parameters())
    m2 = GLS(_opts(stage=2), GLSLossOptions(), DIMS)
    with pytest.raises(Exception, match="stage 1"):
        m2.training_step(_batch(), StepState())
    with pytest.raises(Exception, match="eval_mode"):
        GLS(_opts(stage=1, eval_mode="GL"), GLSLossOptions(), DIMS)


def _encoded(seed=0, n_img=8, n_txt=12):
    torch.manual_seed(seed)
    m = GLS(_opts(stage=2, eval_mode="GL"), GLSLossOptions(), DIMS).eval()
    g = torch.Generator().manual_seed(seed)
    rl = torch.randint(2, 6, (n_img,), generator=g)
    tl = torch.randint(4, 8, (n_txt,), generator=g)
    rmask = torch.arange(5)[None] < rl[:, None]
    tmask = torch.arange(7)[None] < tl[:, None]
    with torch.no_grad():
        images = m.encode_images({"regions": torch.randn(n_img, 5, 12, generator=g), "region_mask": rmask})
        texts = m.encode_texts({"tokens": torch.randn(n_txt, 7, 10, generator=g), "token_mask": tmask})
    return m, images, texts


def _with_mode(m: GLS, **kw) -> GLS:
    m.model_opts = dataclasses.replace(m.model_opts, **kw)
    return m


def _take(d, rows):
    return {k: v[rows] for k, v in d.items()}


def _sources(m, images, texts, queries, shortlist):
    n_img, n_txt = images["global"].shape[0], texts["global"].shape[0]
    pairwise = PairwiseScores(lambda i, t: m.score(_take(images, i), _take(texts, t)), n_img, n_txt,
                              queries=queries, gallery_chunk=5)
    q, g = (images, texts) if queries == "images" else (texts, images)
    rerank = m.rerank_fn(images, texts)
    gl = ShortlistRerankScores(EmbeddingScores(q["global"], g["global"]),
                               lambda qr, cand: rerank(qr, cand, queries), shortlist)
    return pairwise, gl


@pytest.mark.parametrize("queries", ["images", "texts"])
def test_gl_with_the_whole_gallery_as_shortlist_equals_l(queries):
    m, images, texts = _encoded()
    n_img, n_txt = 8, 12
    positives = (torch.arange(n_txt) % n_img) if queries == "texts" else \
        torch.stack([torch.arange(n_img), torch.arange(n_img) + n_img], 1).masked_fill(
            torch.arange(n_img)[:, None] + n_img >= n_txt, -1)
    gallery = n_txt if queries == "images" else n_img
    # Local re-rank only (global weight 0): GL over the whole gallery ranks exactly as L.
    _with_mode(m, eval_mode="L")
    l_src, _ = _sources(m, images, texts, queries, gallery)
    r_l = ranks(l_src, positives)
    _with_mode(m, eval_mode="GL", global_weight=0.0)
    _, gl_src = _sources(m, images, texts, queries, gallery)
    assert torch.equal(ranks(gl_src, positives), r_l)
    # With the global term: GL over the whole gallery = the fused score on every pair.
    _with_mode(m, eval_mode="GL", global_weight=1.0)
    fused_src, gl_src = _sources(m, images, texts, queries, gallery)
    assert torch.equal(ranks(gl_src, positives), ranks(fused_src, positives))
    assert torch.allclose(gl_src.block(0, 3), fused_src.block(0, 3), atol=1e-5)


def test_ground_truth_outside_the_shortlist_is_a_miss():
    m, images, texts = _encoded(n_img=4, n_txt=4)
    texts["tokens"] = images["tokens"][:, :1].expand(4, 4, 16).clone()  # caption k: 4 copies of a region of image k
    texts["mask"] = torch.ones(4, 4, dtype=torch.bool)
    # Globals: image 0 is farthest from its own caption.
    images["global"] = F.normalize(torch.tensor([[1.0, 0], [0, 1], [0.7, 0.7], [1, 0.2]]), dim=-1)
    texts["global"] = F.normalize(torch.tensor([[-1.0, 0], [0, 1], [0.7, 0.7], [1, 0.2]]), dim=-1)
    positives = torch.arange(4)
    _with_mode(m, eval_mode="L")
    l_src, _ = _sources(m, images, texts, "images", 2)
    assert int(ranks(l_src, positives)[0]) == 0  # the local score alone finds it
    _with_mode(m, eval_mode="GL")
    _, gl_src = _sources(m, images, texts, "images", 2)
    r = ranks(gl_src, positives)
    assert int(r[0]) >= 2  # outside the 2-item shortlist: a miss (the reference code says rank 0)
    # The same through the evaluator's shortlist mode: image 0 misses at R@1 (1 of 4 queries).
    plan = m.shortlist_plan(images, texts)
    assert plan["shortlist"] == (50, 100)
    res = evaluate_cross_modal(plan["images"], plan["texts"], {"txt2img": positives}, ["i2t"],
                               rerank_fn=plan["rerank_fn"], shortlist=(2, 2))
    assert res["i2t/R@1"] == pytest.approx(75.0)  # the reference code would report 100
    local = evaluate_cross_modal(images, texts, {"txt2img": positives}, ["i2t"],
                                 score_fn=lambda i, t: _with_mode(m, eval_mode="L").score(_take(images, i),
                                                                                          _take(texts, t)))
    assert local["i2t/R@1"] == pytest.approx(100.0)
    assert _with_mode(m, eval_mode="L").shortlist_plan(images, texts) is None
    assert set(_with_mode(m, eval_mode="G").shortlist_plan(images, texts)) == {"images", "texts"}


def test_encoders_return_what_the_mode_needs():
    m, images, texts = _encoded()
    assert set(images) == {"tokens", "mask", "global"} and images["tokens"].shape[:2] == (8, 5)  # slot 0 dropped
    assert texts["tokens"].shape[:2] == (12, 4)  # [CLS], last wordpiece, [SEP] dropped
    assert torch.allclose(images["global"].norm(dim=-1), torch.ones(8), atol=1e-5)
    _with_mode(m, eval_mode="G")
    g = m.score(images, texts)
    assert torch.allclose(g, images["global"] @ texts["global"].t())
    _with_mode(m, eval_mode="L", local_scale=10.0)
    direct = TokenAlignment(teran_slicing=False)(images["tokens"], images["mask"], texts["tokens"], texts["mask"])
    assert torch.allclose(m.score(images, texts), 10 * direct)


@pytest.mark.parametrize("global_token", ["first", "mean"])
def test_padding_never_reaches_the_embeddings(global_token):
    torch.manual_seed(0)
    m = GLS(_opts(stage=2, global_token=global_token), GLSLossOptions(), DIMS).eval()
    batch = _batch()
    noisy = dict(batch, regions=batch["regions"] + 50.0 * ~batch["region_mask"][..., None],
                 tokens=batch["tokens"] + 50.0 * ~batch["token_mask"][..., None])
    with torch.no_grad():
        for enc in (m.encode_images, m.encode_texts):
            a, b = enc(batch), enc(noisy)
            assert torch.allclose(a["global"], b["global"], atol=1e-5)
            assert torch.allclose(a["tokens"][a["mask"]], b["tokens"][b["mask"]], atol=1e-5)


def test_one_command_trains_both_stages(tmp_path):
    cache = write_synthetic_cache(tmp_path / "syn.h5")
    cfg = load_config(None, ["method=gls", f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=16",
                             "model.layers=1", "model.heads=2", "model.ff_dim=32", "model.shortlist_i2t=8",
                             "model.shortlist_t2i=4", "train.epochs=1", "train.batch_size=32", "train.progress=false",
                             "eval.scenarios=[i2t, t2i]"])
    result = train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "stage1" / "eval" / "test.json").exists()
    assert "rsum" in result.test_metrics["metrics"] and (tmp_path / "run" / "eval" / "test.json").exists()
    stage1, cfg1 = load_method(tmp_path / "run" / "stage1")
    stage2, cfg2 = load_method(tmp_path / "run")
    assert cfg1.model.stage == 1 and cfg1.model.eval_mode == "L" and cfg2.model.stage == 2
    for key, value in stage1.stage1.state_dict().items():
        assert torch.equal(value, stage2.stage1.state_dict()[key]), key
    # Starting again in the same folder reuses the finished stage 1 (no new stage-1 run).
    before = (tmp_path / "run" / "stage1" / "ckpt" / "last.pt").stat().st_mtime_ns
    assert GLS.prepare(cfg, tmp_path / "run").model.stage1 == str(tmp_path / "run" / "stage1")
    assert (tmp_path / "run" / "stage1" / "ckpt" / "last.pt").stat().st_mtime_ns == before


# -- bit-identity of the in-place alignment ----------------------------------------------------


def _reference_aggregate(a, rm, wm, mode):
    """``_aggregate`` as first written (masked copies of the alignment tensor)."""
    neg = torch.finfo(a.dtype).min
    has_r, has_w = rm.any(1), wm.any(3)

    def mrsw():
        return a.masked_fill(~rm, neg).amax(1).masked_fill(~wm[:, 0] | ~has_r, 0.0).sum(-1)

    def mwsr():
        return a.masked_fill(~wm, neg).amax(3).masked_fill(~rm[..., 0] | ~has_w, 0.0).sum(1)

    if mode == "MrSw":
        return mrsw()
    if mode == "MwSr":
        return mwsr()
    if mode == "symm":
        return mrsw() + mwsr()
    n_words = wm.sum(3)[:, 0].to(a.dtype)
    if mode == "MrAVGw":
        return mrsw() / n_words.clamp_min(1.0)
    total = a.masked_fill(~(rm & wm), 0.0).sum((1, 3))
    if mode == "sum":
        return total
    return total / (rm.sum(1)[..., 0].to(a.dtype) * n_words).clamp_min(1.0)


def _reference_alignment_scores(image_tokens, image_mask, text_tokens, text_mask, *, mode="MrSw",
                                max_elements=1 << 26):
    """``alignment_scores`` as first written: the faster version must give the same bits."""
    ni, r, d = image_tokens.shape
    nt, w, _ = text_tokens.shape
    if ni == 0 or nt == 0 or w == 0 or r == 0:
        return image_tokens.new_zeros(ni, nt)
    t_block = max(1, min(nt, max_elements // (r * w)))
    i_block = max(1, min(ni, max_elements // (r * w * t_block)))
    rows = []
    for i0 in range(0, ni, i_block):
        img = image_tokens[i0:i0 + i_block]
        flat_img = img.reshape(-1, d)
        cols = []
        for t0 in range(0, nt, t_block):
            txt = text_tokens[t0:t0 + t_block]
            a = (flat_img @ txt.reshape(-1, d).t()).view(img.shape[0], r, txt.shape[0], w)
            cols.append(_reference_aggregate(a, image_mask[i0:i0 + i_block, :, None, None],
                                             text_mask[None, None, t0:t0 + t_block], mode))
        rows.append(torch.cat(cols, 1))
    return torch.cat(rows, 0)


@pytest.mark.parametrize("mode", ALIGNMENT_MODES)
@pytest.mark.parametrize("all_regions", [False, True])
def test_alignment_scores_and_gradients_are_bit_identical_to_the_reference(monkeypatch, mode, all_regions):
    import featvlr.modules.alignment as alignment
    from featvlr.modules.alignment import alignment_scores, pair_alignment_scores

    g = torch.Generator().manual_seed(5)
    ni, r, nt, w, d = 9, 6, 11, 7, 16
    rl = torch.full((ni,), r) if all_regions else torch.randint(0, r + 1, (ni,), generator=g)
    rm = torch.arange(r)[None] < rl[:, None]
    tm = torch.arange(w)[None] < torch.randint(0, w + 1, (nt,), generator=g)[:, None]
    img, txt = torch.randn(ni, r, d, generator=g), torch.randn(nt, w, d, generator=g)
    weights = torch.randn(ni, nt, generator=g)
    for budget in (1 << 26, r * w * 3, 1):  # one block, blocks of captions, one pair at a time
        got = []
        for fn in (alignment_scores, _reference_alignment_scores):
            v, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
            s = fn(F.normalize(v, dim=-1), rm, F.normalize(t, dim=-1), tm, mode=mode, max_elements=budget)
            (s * weights).sum().backward()
            got.append((s.detach(), v.grad, t.grad))
        assert all(torch.equal(x, y) for x, y in zip(*got)), budget
    # the pair form (no gradient) against itself with the masked copies of the reference
    rows_i, rows_t = torch.randint(0, ni, (30,), generator=g), torch.randint(0, nt, (30,), generator=g)
    pairs = pair_alignment_scores(img, rm, txt, tm, rows_i, rows_t, mode=mode, max_elements=200)
    monkeypatch.setattr(alignment, "_fill_masked_", lambda *args: False)
    assert torch.equal(pairs, pair_alignment_scores(img, rm, txt, tm, rows_i, rows_t, mode=mode, max_elements=200))


@pytest.mark.parametrize("stage", [1, 2])
def test_gls_step_is_bit_identical_to_the_reference_alignment(monkeypatch, stage):
    """Losses and every parameter gradient of a training step with the reference alignment
    in place of the current one (stage 1 and stage 2; dropout on)."""
    import featvlr.modules.alignment as alignment

    results = []
    for fn in (alignment.alignment_scores, _reference_alignment_scores):
        monkeypatch.setattr(alignment, "alignment_scores", fn)
        torch.manual_seed(0)
        m = GLS(_opts(stage=stage, eval_mode="L" if stage == 1 else "GL"), GLSLossOptions(), DIMS)
        m.stage1_ready.fill_(True)
        m.train()
        torch.manual_seed(1)  # the same dropout draws in both runs
        out = m.training_step(_batch(), StepState(epoch=1))
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        results.append(({k: v.detach() for k, v in out.items()},
                        {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert out_a.keys() == out_b.keys() and all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    assert grads_a and grads_a.keys() == grads_b.keys()
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
