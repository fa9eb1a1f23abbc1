"""HREM: relation module, distance-weighted triplet sampling, warm-up, KL gradient, DDP equivalence."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from featvlr.losses.triplet import DistanceWeightedTripletLoss, distance_weights
from featvlr.methods.base import FeatureDims, StepState
from featvlr.methods.hrem import HREM, HREMLossOptions, HREMModelOptions
from featvlr.modules.relation import InstanceRelation, fragment_similarity, relation_attention_mask

R, DR, L, DT = 7, 12, 9, 10


def tiny_method(*, warmup: int = 0, dropout: float = 0.1, padding: str = "masked", base: str = "triplet",
                seed: int = 0, topk: int = 4) -> HREM:
    torch.manual_seed(seed)
    model = HREMModelOptions(embed_dim=16, fragment_heads=4, graph_heads=4, topk=topk, dropout=dropout,
                             graph_dropout=dropout, fragment_padding=padding)
    loss = HREMLossOptions(graph_warmup_steps=warmup, base=base)
    return HREM(model, loss, FeatureDims(region_dim=DR, n_regions=R, text_dim=DT))


def sample_items(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for b in range(n):
        r = int(torch.randint(2, R + 1, (1,), generator=g))
        w = int(torch.randint(1, L + 1, (1,), generator=g))
        items.append({"regions": torch.randn(r, DR, generator=g), "tokens": torch.randn(w, DT, generator=g),
                      "image_id": b // 2})
    return items


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    rmax = max(len(i["regions"]) for i in items)
    wmax = max(len(i["tokens"]) for i in items)
    out = {"regions": torch.zeros(len(items), rmax, DR), "region_mask": torch.zeros(len(items), rmax, dtype=torch.bool),
           "tokens": torch.zeros(len(items), wmax, DT), "token_mask": torch.zeros(len(items), wmax, dtype=torch.bool),
           "image_ids": torch.tensor([i["image_id"] for i in items])}
    for b, i in enumerate(items):
        out["regions"][b, :len(i["regions"])] = i["regions"]
        out["region_mask"][b, :len(i["regions"])] = True
        out["tokens"][b, :len(i["tokens"])] = i["tokens"]
        out["token_mask"][b, :len(i["tokens"])] = True
    return out


def toy_fragments(seed: int = 0, n_txt: int = 5, n_img: int = 4, w: int = 6, r: int = 5, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    words, regions = torch.randn(n_txt, w, d, generator=g), torch.randn(n_img, r, d, generator=g)
    wl = torch.tensor([1, 3, 6, 2, 5][:n_txt])
    rl = torch.tensor([5, 2, 4, 1][:n_img])
    wm = torch.arange(w)[None] < wl[:, None]
    rm = torch.arange(r)[None] < rl[:, None]
    return words, wm, regions, rm


# -- fragment similarity -------------------------------------------------------------------


def pad_k(x: torch.Tensor, k: int) -> torch.Tensor:
    top = x.topk(min(k, len(x))).values
    return F.pad(top, (0, k - len(top)))


def test_fragment_similarity_matches_per_pair_loop():
    words, wm, regions, rm = toy_fragments()
    k = 4
    got = fragment_similarity(words, wm, regions, rm, topk=k, padding="masked", chunk_elements=50)
    for j in range(words.shape[0]):
        for i in range(regions.shape[0]):
            w = F.normalize(words[j][wm[j]], dim=-1)
            r = F.normalize(regions[i][rm[i]], dim=-1)
            a = F.leaky_relu(w @ r.t(), 0.1)
            row = F.normalize(a, dim=0).max(dim=1).values  # per word
            col = F.normalize(a, dim=1).max(dim=0).values  # per region
            torch.testing.assert_close(got.t2i_mean[j, i], row.mean())
            torch.testing.assert_close(got.t2i_topk[j, i], pad_k(row, k))
            torch.testing.assert_close(got.i2t_mean[i, j], col.mean())
            torch.testing.assert_close(got.i2t_topk[i, j], pad_k(col, k))


def test_fragment_similarity_paper_mode_matches_reference_loop():
    """A per-caption loop written from the reference's description (padding slots included)."""
    words, wm, regions, rm = toy_fragments(seed=1)
    k = 4
    got = fragment_similarity(words, wm, regions, rm, topk=k, padding="paper", chunk_elements=1 << 20)
    img = F.normalize(regions, dim=-1)  # every region slot, padding included
    for j in range(words.shape[0]):
        n = int(wm[j].sum())
        sel = max(n, k)
        cap = F.normalize(words[j, :sel], dim=-1).unsqueeze(0).expand(img.shape[0], -1, -1)
        a = F.leaky_relu(torch.bmm(cap, img.transpose(1, 2)), 0.1)  # [I, sel, R]
        row = F.normalize(a, dim=1).max(dim=2).values
        col = F.normalize(a, dim=2)[:, :n].max(dim=1).values
        torch.testing.assert_close(got.t2i_mean[j], row[:, :n].mean(1))
        torch.testing.assert_close(got.t2i_topk[j], torch.stack([pad_k(x, k) for x in row]))
        torch.testing.assert_close(got.i2t_mean[:, j], col.mean(1))
        torch.testing.assert_close(got.i2t_topk[:, j], torch.stack([pad_k(x, k) for x in col]))


def test_fragment_similarity_chunking_is_exact():
    words, wm, regions, rm = toy_fragments(seed=2)
    a = fragment_similarity(words, wm, regions, rm, topk=3, chunk_elements=1)
    b = fragment_similarity(words, wm, regions, rm, topk=3, chunk_elements=1 << 30)
    for key in ("t2i_topk", "t2i_mean", "i2t_topk", "i2t_mean"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key))


# -- attention mask --------------------------------------------------------------------------


def test_attention_mask_is_scaled_relevance_on_connections_and_minus_inf_elsewhere():
    torch.manual_seed(0)
    connect = torch.rand(6, 6) > 0.5
    relevance = torch.randn(6, 6)
    m = relation_attention_mask(connect, relevance, 1.5)
    assert torch.isinf(m[~connect]).all() and (m[~connect] < 0).all()
    torch.testing.assert_close(m[connect], 1.5 * relevance[connect])


def test_batch_graph_blocks():
    torch.manual_seed(0)
    b, d = 6, 16
    g = torch.Generator().manual_seed(3)
    v = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    t = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    regions, words = torch.randn(b, 5, d, generator=g), torch.randn(b, 4, d, generator=g)
    rm, wm = torch.ones(b, 5, dtype=torch.bool), torch.ones(b, 4, dtype=torch.bool)
    rel = InstanceRelation(embed_dim=d, num_heads=4, topk=3, mask_weight=1.5, dropout=0.0)
    graph = rel.relations(v, t, regions, rm, words, wm)
    c, m = graph.connect, graph.attn_mask
    assert c.shape == m.shape == (2 * b, 2 * b)
    # top 50 % of every row of every block (no ties on random data); self always connected
    for blk in (c[:b, :b], c[:b, b:], c[b:, :b], c[b:, b:]):
        assert (blk.sum(1) == b // 2).all()
    assert c[:b, :b].diagonal().all() and c[b:, b:].diagonal().all()
    torch.testing.assert_close(m[c], 1.5 * graph.relevance[c])
    assert torch.isinf(m[~c]).all()
    torch.testing.assert_close(graph.relevance[:b, :b], torch.exp(-torch.cdist(v, v)))
    torch.testing.assert_close(graph.relevance[:b, b:], graph.r_i2t)
    torch.testing.assert_close(graph.relevance[b:, :b], graph.r_t2i)


# -- evaluation: a plain dual encoder ------------------------------------------------------------


def test_graph_is_absent_at_evaluation():
    m = tiny_method()
    batch = collate(sample_items(6))
    m.eval()
    with torch.no_grad():
        v1, t1 = m.encode_images(batch), m.encode_texts(batch)
        for p in m.criterion.parameters():
            p.add_(1.0)
        del m.criterion
        v2, t2 = m.encode_images(batch), m.encode_texts(batch)
    assert torch.equal(v1, v2) and torch.equal(t1, t2)
    torch.testing.assert_close(v1.norm(dim=-1), torch.ones(6))


# -- distance-weighted sampling --------------------------------------------------------------------


def test_sampler_never_picks_a_positive_and_follows_its_weights():
    # columns 0 and 1 are positives of even anchors, column 1 a (hard) negative of odd ones;
    # column 7 is beyond the cutoff. n_dim = 16 spreads the weights enough to measure them.
    sims = torch.tensor([0.9, 0.5, 0.45, 0.40, 0.30, 0.2, 0.0, -0.6])
    n_anchor = 40000
    sim = sims.expand(n_anchor, -1).contiguous()
    pos = torch.zeros_like(sim, dtype=torch.bool)
    pos[:, 0] = True
    pos[:, 1] = torch.arange(n_anchor) % 2 == 0
    loss = DistanceWeightedTripletLoss(cutoff=1.7, n_dim=16)
    anchor, _, neg, ok = loss.sample_negatives(sim, pos, torch.Generator().manual_seed(0))
    assert ok and len(neg) == int(pos.sum())
    assert not pos[anchor, neg].any()
    assert (neg != 7).all()
    for parity in (0, 1):
        rows = anchor % 2 == parity
        w = distance_weights(sim[parity:parity + 1], ~pos[parity:parity + 1], cutoff=1.7, n_dim=16)[0]
        assert w[0] == 0 and w[7] == 0 and (w[1] == 0) == (parity == 0)
        assert (w[2:7] > 0.01).all()
        freq = torch.bincount(neg[rows], minlength=8).float() / rows.sum()
        assert (freq - w).abs().max() < 0.015, (freq, w)


def test_reference_weights_underflow_on_a_far_negative():
    sim = torch.tensor([[0.9, 0.3, 0.12, 0.10, -0.7]])  # column 4: far beyond the cutoff
    neg = torch.tensor([[False, True, True, True, True]])
    ref = distance_weights(sim, neg, stable=False)
    fixed = distance_weights(sim, neg)
    assert ref.sum() == 0  # the reference cannot sample this anchor at all
    torch.testing.assert_close(fixed.sum(), torch.tensor(1.0))
    assert fixed[0, 4] == 0 and fixed[0, 1] > 0.99
    # where nothing underflows, both normalisations give the same distribution
    sim = torch.tensor([[0.9, 0.3, 0.2, 0.1, 0.0]])
    torch.testing.assert_close(distance_weights(sim, neg, stable=False, n_dim=16), distance_weights(sim, neg, n_dim=16))


def test_sampler_on_empty_modes():
    sim = torch.tensor([[1.0, -0.9], [-0.9, 1.0]])  # negatives at distance 1.95 > cutoff
    for mode in ("skip", "zero"):
        loss = DistanceWeightedTripletLoss(cutoff=1.7, on_empty=mode)
        assert float(loss.direction(sim, torch.eye(2, dtype=torch.bool))) == 0.0
    # one anchor can sample, the other cannot: skip keeps the first, zero drops the direction
    sim = torch.tensor([[1.0, 0.5], [-0.9, 0.2]])
    pos = torch.eye(2, dtype=torch.bool)
    skip = DistanceWeightedTripletLoss(cutoff=1.7, on_empty="skip").direction(sim, pos)
    zero = DistanceWeightedTripletLoss(cutoff=1.7, on_empty="zero").direction(sim, pos)
    torch.testing.assert_close(skip, torch.tensor(0.2 + 0.5 - 1.0).clamp_min(0))
    assert float(zero) == 0.0


# -- KL gradient and warm-up ----------------------------------------------------------------------


def test_kl_gradient_reaches_the_relevance_mlps():
    m = tiny_method(dropout=0.0)
    batch = collate(sample_items(8))
    out = m(batch, StepState(step=0))
    out["relation_kl_loss"].backward()
    rel = m.criterion.relation.relevance
    for mlp in (rel.mlp_t2i, rel.mlp_i2t):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
    # the guide is detached: the KL moves neither the encoders nor the transformer
    assert all(p.grad is None for p in m.encoders.parameters())
    assert all(p.grad is None for p in m.criterion.relation.transformer.parameters())


def test_warmup_switches_the_graph_losses_on():
    m = tiny_method(warmup=3)
    batch = collate(sample_items(8))
    for step in range(5):
        m.zero_grad(set_to_none=True)
        out = m(batch, StepState(step=step))
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        graph_grads = [p.grad for p in m.criterion.relation.parameters()]
        if step < 3:
            assert {k for k in out if k.endswith("_loss")} == {"base_loss"}
            assert float(out["graph_on"]) == 0.0
            assert all(g is None for g in graph_grads)
        else:
            assert {"base_loss", "graph_loss", "relation_kl_loss"} <= set(out)
            assert float(out["graph_on"]) == 1.0 and float(out["graph_loss"].detach()) > 0
            assert any(g is not None and g.abs().sum() > 0 for g in graph_grads)


def test_param_groups_graph_lr_and_decay():
    m = tiny_method()
    m.model_opts.graph_lr_factor = 0.5
    groups = m.param_groups(1e-3, 1e-4)
    assert [g["lr"] for g in groups] == [1e-3, 5e-4]
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    n_graph = sum(p.numel() for p in m.criterion.parameters())
    assert sum(p.numel() for p in groups[1]["params"]) == n_graph
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in m.parameters())


def test_hinge_base_and_paper_padding_run():
    m = tiny_method(base="hinge", padding="paper")
    out = m(collate(sample_items(8)), StepState(step=0, epoch=1))
    assert torch.isfinite(sum(v for k, v in out.items() if k.endswith("_loss")))


# -- DDP: two gloo ranks equal one process on the whole batch ------------------------------------------

N_ITEMS = 8
PADDINGS = ("masked", "paper")


def _ddp_step(padding: str, batch: dict, seed: int) -> dict:
    # top-8 > rank 0's 6 token slots: "paper" scores slots only the other rank's padding creates
    m = tiny_method(dropout=0.0, padding=padding, topk=8)
    m.eval()  # deterministic encoders (BatchNorm running stats, no dropout); the loss is the same code
    with torch.no_grad():  # a non-zero projection of padding, as after training
        m.encoders.text_proj.bias.copy_(torch.randn(m.encoders.text_proj.bias.shape,
                                                    generator=torch.Generator().manual_seed(7)))
    torch.manual_seed(seed)
    out = m(batch, StepState(step=5))
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    return {"out": {k: v.detach() for k, v in out.items()},
            "graph_grads": {n: p.grad.clone() for n, p in m.criterion.named_parameters() if p.grad is not None},
            "enc_grads": {n: p.grad.clone() for n, p in m.encoders.named_parameters() if p.grad is not None}}


def _ddp_worker(rank: int, world: int, init: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        share = N_ITEMS // world
        batch = collate(sample_items(N_ITEMS)[rank * share:(rank + 1) * share])  # ranks pad differently
        # rank 0's torch seed must be the one every rank samples negatives with
        res = {padding: _ddp_step(padding, batch, 123 + rank) for padding in PADDINGS}
        torch.save(res, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # both ranks done with every collective before either tears down
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: with a gloo group used by differentiable
    # all-reduces, C++ static destruction at exit sometimes aborts a finished worker.
    os._exit(0)


def test_ddp_two_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path}/pg", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    batch = collate(sample_items(N_ITEMS))
    for padding in PADDINGS:
        one = _ddp_step(padding, batch, 123)
        assert float(one["out"]["graph_on"]) == 1.0
        for r in ranks:
            r = r[padding]
            for key in ("base_loss", "graph_loss", "relation_kl_loss"):
                torch.testing.assert_close(r["out"][key], one["out"][key], rtol=1e-4, atol=1e-4)
            # relation parameters: every rank holds the gradient of the global loss
            for n, g in one["graph_grads"].items():
                torch.testing.assert_close(r["graph_grads"][n], g, rtol=1e-3, atol=1e-5)
        # encoders: the mean of the rank gradients (what DDP applies) equals one process
        for n, g in one["enc_grads"].items():
            avg = (ranks[0][padding]["enc_grads"][n] + ranks[1][padding]["enc_grads"][n]) / 2
            torch.testing.assert_close(avg, g, rtol=1e-3, atol=1e-5)


# -- bit-identity of the in-place fragment similarity -----------------------------------------


def _reference_fragment_similarity(words, word_mask, regions, region_mask, *, topk=10, padding="masked",
                                   negative_slope=0.1, chunk_elements=1 << 25):
    """The fragment similarity as first written (masked copies of the [c, I, W, R] block,
    out-of-place passes): the faster version must give the same bits."""
    n_txt, n_words, _ = words.shape
    n_img, n_reg, _ = regions.shape
    true_word = word_mask.bool()
    if padding == "paper":
        lengths = true_word.sum(1, keepdim=True)
        pos = torch.arange(n_words).unsqueeze(0)
        sel_word = pos < lengths.clamp_min(topk)
        reg = torch.ones_like(region_mask, dtype=torch.bool)
    else:
        sel_word, reg = true_word, region_mask.bool()
    words = F.normalize(words, dim=-1) * sel_word.unsqueeze(-1).to(words.dtype)
    regions = F.normalize(regions, dim=-1) * reg.unsqueeze(-1).to(regions.dtype)
    chunk = max(1, chunk_elements // max(1, n_img * n_words * n_reg))
    out = {"t2i_topk": [], "t2i_mean": [], "i2t_topk": [], "i2t_mean": []}
    reg_b = reg.view(1, n_img, 1, n_reg)

    def masked_topk(x, valid, k):
        kk = min(k, x.shape[-1])
        top = x.masked_fill(~valid, float("-inf")).topk(kk, dim=-1).values
        top = top.masked_fill(torch.isinf(top), 0.0)
        return F.pad(top, (0, k - kk)) if kk < k else top

    def masked_mean(x, valid):
        v = valid.to(x.dtype)
        return (x * v).sum(-1) / v.sum(-1).clamp_min(1.0)

    for start in range(0, n_txt, chunk):
        w = words[start:start + chunk]
        c = w.shape[0]
        tw = true_word[start:start + chunk].view(c, 1, n_words)
        sw = sel_word[start:start + chunk].view(c, 1, n_words)
        a = F.leaky_relu(torch.einsum("cwd,ird->ciwr", w, regions), negative_slope)
        row = F.normalize(a, dim=2).masked_fill(~reg_b, float("-inf")).amax(dim=3)
        row = row.masked_fill(torch.isinf(row), 0.0)
        out["t2i_mean"].append(masked_mean(row, tw.expand_as(row)))
        out["t2i_topk"].append(masked_topk(row, sw.expand_as(row), topk))
        col = F.normalize(a, dim=3).masked_fill(~tw.unsqueeze(-1), float("-inf")).amax(dim=2)
        col = col.masked_fill(torch.isinf(col), 0.0)
        regs = reg.unsqueeze(0).expand_as(col)
        out["i2t_mean"].append(masked_mean(col, regs))
        out["i2t_topk"].append(masked_topk(col, regs, topk))
    cat = {k: torch.cat(v, dim=0) for k, v in out.items()}
    return cat["t2i_topk"], cat["t2i_mean"], cat["i2t_topk"].transpose(0, 1), cat["i2t_mean"].t()


def test_fragment_similarity_is_bit_identical_to_the_reference():
    g = torch.Generator().manual_seed(3)
    for n_txt, n_img, w, r, d in ((5, 4, 6, 5, 8), (24, 17, 11, 9, 32), (3, 2, 1, 1, 4)):
        wl = torch.randint(0, w + 1, (n_txt,), generator=g)  # a caption without words included
        rl = torch.randint(1, r + 1, (n_img,), generator=g)
        wm, rm = torch.arange(w)[None] < wl[:, None], torch.arange(r)[None] < rl[:, None]
        words, regions = torch.randn(n_txt, w, d, generator=g), torch.randn(n_img, r, d, generator=g)
        for padding in ("masked", "paper"):
            for chunk in (1, 97, 1 << 25):
                got = fragment_similarity(words, wm, regions, rm, topk=4, padding=padding, chunk_elements=chunk)
                ref = _reference_fragment_similarity(words, wm, regions, rm, topk=4, padding=padding,
                                                     chunk_elements=chunk)
                for name, want in zip(("t2i_topk", "t2i_mean", "i2t_topk", "i2t_mean"), ref):
                    assert torch.equal(getattr(got, name), want), (n_txt, padding, chunk, name)


def test_hrem_graph_step_is_bit_identical_to_the_reference(monkeypatch):
    """The whole graph-on step (losses and every parameter gradient) with the reference
    fragment similarity in place of the current one."""
    import featvlr.modules.relation as relation

    batch = collate(sample_items(10, seed=4))
    results = []
    for fn in (relation.fragment_similarity, _reference_fragment_similarity):
        if fn is _reference_fragment_similarity:
            def fn(*args, **kw):  # noqa: F811 - the reference wrapped into FragmentScores
                t2i_topk, t2i_mean, i2t_topk, i2t_mean = _reference_fragment_similarity(*args, **kw)
                return relation.FragmentScores(t2i_topk=t2i_topk, t2i_mean=t2i_mean,
                                               i2t_topk=i2t_topk.contiguous(), i2t_mean=i2t_mean.contiguous())
        monkeypatch.setattr(relation, "fragment_similarity", fn)
        for padding in ("masked", "paper"):
            m = tiny_method(padding=padding, dropout=0.0, seed=1)
            out = m(batch, StepState(step=5, epoch=1))
            total = sum(v for k, v in out.items() if k.endswith("_loss"))
            total.backward()
            results.append((padding, {k: v.detach() for k, v in out.items()},
                            {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    new, ref = results[:2], results[2:]
    for (pad, out_a, grads_a), (_, out_b, grads_b) in zip(new, ref):
        assert out_a.keys() == out_b.keys() and "graph_loss" in out_a
        assert all(torch.equal(out_a[k], out_b[k]) for k in out_a), pad
        assert grads_a.keys() == grads_b.keys()
        assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a), pad
