"""CoVLR's meta-learning step against an independent plain-autograd reference."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from featvlr.core.errors import ConfigError
from featvlr.losses.structure import (
    StructurePreservationLoss,
    off_diagonal,
    relation_kl,
    relation_matrix,
    relation_mse,
)
from featvlr.methods.base import FeatureDims, StepState
from featvlr.methods.covlr import CoVLR, first_occurrence, select_virtual, split_batch
from featvlr.methods.registry import create_method, get_method

DIMS = FeatureDims(region_dim=6, n_regions=4, text_dim=5)
STATE = StepState(epoch=1)  # past the hinge warm-up: hardest negatives


def make_batch(n: int = 6, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rmask = torch.ones(n, 4, dtype=torch.bool)
    rmask[1, 3:] = False
    rmask[4, 2:] = False
    tmask = torch.ones(n, 5, dtype=torch.bool)
    tmask[0, 3:] = False
    tmask[3, 4:] = False
    batch = {
        "regions": torch.randn(n, 4, 6, generator=g, dtype=dtype) * rmask[..., None],
        "region_mask": rmask,
        "tokens": torch.randn(n, 5, 5, generator=g, dtype=dtype) * tmask[..., None],
        "token_mask": tmask,
        "pooled_text": torch.randn(n, 5, generator=g, dtype=dtype),
        "image_ids": torch.tensor([3, 3, 7, 1, 9, 4][:n] + list(range(20, 20 + max(0, n - 6)))),
    }
    batch["region_lengths"] = rmask.sum(1)
    batch["token_lengths"] = tmask.sum(1)
    return batch


def make_covlr(seed: int = 0, **loss) -> CoVLR:
    torch.manual_seed(seed)
    cls = get_method("covlr")
    model = cls.ModelOptions(embed_dim=8, pooling="mean", text_head="linear")
    opts = {"alpha": 0.3, "beta": 0.7, "structure_temperature": 0.5, "virtual_step": "sum", **loss}
    return cls(model, cls.LossOptions(**opts), DIMS).double()


def method_grads(method, batch) -> dict[str, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    out = method(batch, STATE)
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


# ---- an independent reference: the same towers and losses written out by hand -----------


def ref_towers(p: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r, rm = batch["regions"], batch["region_mask"]
    b, n_r, _ = r.shape
    h = r @ p["image_proj.mlp_in.weight"].t() + p["image_proj.mlp_in.bias"]
    flat = h.reshape(b * n_r, -1)  # BatchNorm over every region slot, padding included
    mu, var = flat.mean(0), flat.var(0, unbiased=False)
    flat = (flat - mu) / torch.sqrt(var + 1e-5) * p["image_proj.bn.bn.weight"] + p["image_proj.bn.bn.bias"]
    h = torch.relu(flat.reshape(b, n_r, -1))
    x = r @ p["image_proj.fc.weight"].t() + p["image_proj.fc.bias"] + h @ p["image_proj.mlp_out.weight"].t() \
        + p["image_proj.mlp_out.bias"]
    m = rm.unsqueeze(-1).to(x.dtype)
    v = (x * m).sum(1) / m.sum(1)
    tok, tm = batch["tokens"], batch["token_mask"]
    y = tok @ p["text_proj.weight"].t() + p["text_proj.bias"]
    m = tm.unsqueeze(-1).to(y.dtype)
    t = (y * m).sum(1) / m.sum(1)
    return v / v.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)


def ref_hinge(v, t, ids, margin=0.2):
    s = v @ t.t()
    pos = ids[:, None] == ids[None, :]
    d = s.diag()
    cost_c = torch.where(pos, torch.zeros_like(s), (margin + s - d[:, None]).clamp(min=0))
    cost_i = torch.where(pos, torch.zeros_like(s), (margin + s - d[None, :]).clamp(min=0))
    return cost_c.max(1).values.sum() + cost_i.max(0).values.sum()


def ref_structure(x, ref, tau, match, ids=None):
    """Row by row: the compared pairs are the other items (of other images when ``ids``)."""
    def rel(a):
        a = a / a.norm(dim=1, keepdim=True)
        return a @ a.t() / tau

    s, r = rel(x), rel(ref)
    rows_s, rows_r = [], []
    for i in range(s.shape[0]):
        keep = [j for j in range(s.shape[0]) if j != i and (ids is None or ids[j] != ids[i])]
        if keep:
            rows_s.append(s[i, keep])
            rows_r.append(r[i, keep])
    if match == "mse":
        return torch.cat([(a - b) ** 2 for a, b in zip(rows_s, rows_r)]).mean()
    kls = []
    for a, b in zip(rows_s, rows_r):
        p_r = torch.softmax(b, 0)
        kls.append((p_r * (torch.log(p_r) - torch.log_softmax(a, 0))).sum())
    return torch.stack(kls).mean()


def ref_meta_test(p, batch, tau, match, exclude_positives=False):
    v, t = ref_towers(p, batch)
    ids = batch["image_ids"].tolist()
    keep = [i for i, x in enumerate(ids) if x not in ids[:i]]
    rm = batch["region_mask"].unsqueeze(-1).to(batch["regions"].dtype)
    mean_regions = (batch["regions"] * rm).sum(1) / rm.sum(1)
    text_ids = ids if exclude_positives else None
    return ref_structure(v[keep], mean_regions[keep], tau, match) \
        + ref_structure(t, batch["pooled_text"], tau, match, text_ids)


def reference_grads(method: CoVLR, batch, *, alpha, beta, tau, match, virtual, second_order=True,
                    exclude_positives=False, step="sum"):
    """grad of L_cm(theta) + beta * L_mt(theta - delta) by plain autograd, delta =
    alpha * grad L_cm(theta) ("sum"), alpha * grad L_cm / 2B ("mean") or the normalised step."""
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in method.encoders.named_parameters()}
    v, t = ref_towers(theta, batch)
    l_cm = ref_hinge(v, t, batch["image_ids"])
    names = [n for n in theta if n in virtual]
    g = torch.autograd.grad(l_cm, [theta[n] for n in names], create_graph=second_order, retain_graph=True)
    fast = dict(theta)
    if step == "normalized":
        # |theta| is the step's scale, a constant; the direction g / |g| is differentiated
        theta_norm = torch.sqrt(sum((theta[n].detach() ** 2).sum() for n in names))
        factor = alpha * theta_norm / torch.sqrt(sum((gi ** 2).sum() for gi in g))
    elif step == "mean":
        factor = alpha / (2 * len(batch["image_ids"]))
    else:
        factor = alpha
    fast.update({n: theta[n] - factor * gi for n, gi in zip(names, g)})
    total = l_cm + beta * ref_meta_test(fast, batch, tau, match, exclude_positives)
    grads = torch.autograd.grad(total, list(theta.values()), allow_unused=True)
    return {n: gr for n, gr in zip(theta, grads)}, theta, names


@pytest.mark.parametrize("virtual,match,exclude_positives,step,log_cosine", [
    (["all"], "kl", False, "sum", True), (["text_proj", "image_proj.mlp_out"], "mse", False, "sum", False),
    (["heads"], "kl", True, "sum", True), (["all"], "kl", False, "normalized", True),
    (["all"], "mse", False, "mean", False), (["heads"], "kl", False, "normalized", False)])
def test_outer_gradient_matches_plain_autograd_second_order(virtual, match, exclude_positives, step, log_cosine):
    batch = make_batch()
    alpha = 0.05 if step == "normalized" else 0.3
    method = make_covlr(virtual_params=virtual, match=match, exclude_positives=exclude_positives,
                        virtual_step=step, alpha=alpha, log_meta_cosine=log_cosine)
    got = method_grads(method, batch)
    names = method.virtual_names
    want, _, _ = reference_grads(method, batch, alpha=alpha, beta=0.7, tau=0.5, match=match, virtual=names,
                                 exclude_positives=exclude_positives, step=step)
    for n, w in want.items():
        assert torch.allclose(got[f"encoders.{n}"], w, atol=1e-9, rtol=1e-7), n


def test_first_order_differs_exactly_by_the_second_order_term():
    batch = make_batch(seed=1)
    so = method_grads(make_covlr(), batch)
    fo = method_grads(make_covlr(first_order=True), batch)
    method = make_covlr()
    # first-order reference: the inner gradient detached
    want_fo, _, _ = reference_grads(method, batch, alpha=0.3, beta=0.7, tau=0.5, match="kl",
                                    virtual=method.virtual_names, second_order=False)
    for n, w in want_fo.items():
        assert torch.allclose(fo[f"encoders.{n}"], w, atol=1e-9, rtol=1e-7), n
    # second-order term: -alpha * beta * H u, u = grad L_mt at theta', H = Hessian of L_cm
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in method.encoders.named_parameters()}
    v, t = ref_towers(theta, batch)
    g = torch.autograd.grad(ref_hinge(v, t, batch["image_ids"]), list(theta.values()), create_graph=True)
    fast = {n: (theta[n] - 0.3 * gi).detach().requires_grad_(True) for n, gi in zip(theta, g)}
    u = torch.autograd.grad(ref_meta_test(fast, batch, 0.5, "kl"), list(fast.values()))
    hu = torch.autograd.grad(g, list(theta.values()), grad_outputs=u, allow_unused=True)
    assert any(h is not None and h.abs().max() > 1e-6 for h in hu)  # the term is not trivially zero
    for n, h in zip(theta, hu):
        term = torch.zeros_like(theta[n]) if h is None else -0.3 * 0.7 * h
        key = f"encoders.{n}"
        assert torch.allclose(so[key] - fo[key], term, atol=1e-9, rtol=1e-6), n


def _dup(batch):
    """The batch twice over (same image ids): every anchor's hardest negative is unchanged."""
    return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim else v for k, v in batch.items()}


@pytest.mark.parametrize("step", ["normalized", "mean", "sum"])
def test_virtual_step_size_does_not_depend_on_the_batch_size(step):
    """The same data at twice the batch size: the summed hinge doubles, and with it a plain SGD
    step; the normalised and the mean-reduced steps stay where they were."""
    batch = make_batch()
    sizes = {}
    for name, b in (("single", batch), ("double", _dup(batch))):
        method = make_covlr(virtual_step=step, alpha=0.05)
        out = method(b, STATE)
        sizes[name] = (out["virtual_step_norm"].item(), out["virtual_step_rel"].item())
    if step == "sum":
        assert sizes["double"][0] == pytest.approx(2 * sizes["single"][0], rel=1e-6)
    else:
        assert sizes["double"][0] == pytest.approx(sizes["single"][0], rel=1e-6)
        assert sizes["double"][1] == pytest.approx(sizes["single"][1], rel=1e-6)
    if step == "normalized":
        assert sizes["single"][1] == pytest.approx(0.05, rel=1e-6)  # alpha is the size relative to theta


def test_no_virtual_step_in_the_hinge_warmup_unless_asked():
    batch = make_batch()
    warm = StepState(epoch=0)
    out = make_covlr(virtual_step="normalized", alpha=0.05)(batch, warm)
    assert out["virtual_step_norm"].item() == 0.0 and out["meta_plain_cosine"].item() == pytest.approx(1.0)
    assert out["meta_step_on"].item() == 0.0  # the trainer's "never acted" switch
    assert make_covlr(virtual_step="normalized", alpha=0.05)(batch, STATE)["meta_step_on"].item() == 1.0
    assert make_covlr(virtual_step="normalized", alpha=0.0)(batch, STATE)["meta_step_on"].item() == 0.0
    out = make_covlr(virtual_step="normalized", alpha=0.05, meta_during_warmup=True)(batch, warm)
    assert out["virtual_step_rel"].item() == pytest.approx(0.05, rel=1e-6)
    # in the warm-up the meta-loss is the structure term at theta: beta * grad L_mt(theta)
    method = make_covlr(virtual_step="normalized", alpha=0.05)
    method.zero_grad()
    out = method(batch, warm)
    out["meta_loss"].backward()
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in method.encoders.named_parameters()}
    want = torch.autograd.grad(0.7 * ref_meta_test(theta, batch, 0.5, "kl"), list(theta.values()), allow_unused=True)
    for (n, p), w in zip(method.encoders.named_parameters(), want):
        assert torch.allclose(p.grad, torch.zeros_like(p) if w is None else w, atol=1e-9), n


def test_meta_gradient_differs_from_plain_structure_gradient_after_warmup():
    """After the warm-up, a normalised step of a few percent of the weights turns the meta
    gradient away from the plain structure gradient (what makes the meta-step more than a
    weighted structure term); a plain SGD step on the summed hinge at the earlier alpha leaves
    them parallel."""
    batch = make_batch(n=12, seed=3)
    out = make_covlr(virtual_step="normalized", alpha=0.05)(batch, STATE)
    assert out["meta_plain_cosine"].item() < 0.999
    out = make_covlr(virtual_step="sum", alpha=1e-5)(batch, STATE)
    assert out["meta_plain_cosine"].item() > 0.999
    for key in ("meta_plain_cosine", "virtual_step_rel", "meta_grad_norm", "plain_grad_norm"):
        assert out[key].numel() == 1 and not key.endswith("_loss")


def test_beta_zero_is_vse():
    batch = make_batch(seed=2)
    covlr = make_covlr(seed=5, beta=0.0)
    vse_cls = get_method("vse")
    vse = vse_cls(vse_cls.ModelOptions(embed_dim=8, pooling="mean", text_head="linear"), vse_cls.LossOptions(),
                  DIMS).double()
    vse.load_state_dict(covlr.state_dict())  # same parameter names
    a, b = method_grads(covlr, batch), method_grads(vse, batch)
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_frozen_references_get_no_gradient():
    batch = make_batch(seed=3)
    batch["pooled_text"].requires_grad_(True)
    method_grads(make_covlr(), batch)
    assert batch["pooled_text"].grad is None
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    StructurePreservationLoss(match="kl")(x, ref).backward()
    assert ref.grad is None and x.grad is not None


def test_teacher_reference_is_frozen(tmp_path):
    from featvlr.config import Config, config_to_dict
    from featvlr.core.checkpoint import save_checkpoint

    cls = get_method("vse")
    cfg = Config(method="vse", model=cls.ModelOptions(embed_dim=8, pooling="mean"), loss=cls.LossOptions())
    teacher = create_method(cfg, dims=DIMS)
    save_checkpoint(tmp_path / "ckpt" / "best.pt", {"method": "vse", "config": config_to_dict(cfg),
                                                     "dims": vars(DIMS).copy(), "model": teacher.state_dict()})
    from featvlr.inference.loading import load_method

    method = make_covlr(reference=str(tmp_path)).float()
    method.attach_runs(load_method)
    batch = {k: v.float() if v.is_floating_point() else v for k, v in make_batch(seed=4).items()}
    grads = method_grads(method, batch)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    loaded = method.teacher(torch.device("cpu"))
    assert all(p.grad is None and not p.requires_grad for p in loaded.parameters())
    assert not any(n.startswith("_teacher") for n in method.state_dict())


def test_batchnorm_running_stats_update_once():
    batch = make_batch(seed=5)
    covlr = make_covlr()
    vse_cls = get_method("vse")
    vse = vse_cls(vse_cls.ModelOptions(embed_dim=8, pooling="mean", text_head="linear"), vse_cls.LossOptions(),
                  DIMS).double()
    vse.load_state_dict(covlr.state_dict())
    method_grads(covlr, batch)
    method_grads(vse, batch)
    for (n, a), (_, b) in zip(covlr.named_buffers(), vse.named_buffers()):
        assert torch.equal(a, b), n
    assert int(dict(covlr.named_buffers())["encoders.image_proj.bn.bn.num_batches_tracked"]) == 1


def test_split_meta_test_batch_uses_first_half_for_meta_train():
    batch = make_batch(n=8, seed=6)
    method = make_covlr(meta_test_batch="split")
    out = method(batch, STATE)
    first, second = split_batch(batch)
    assert first["regions"].shape[0] == 4 and second["tokens"].shape[0] == 4
    with torch.no_grad():
        v, t = method.encode_images(first), method.encode_texts(first)
    assert torch.allclose(out["contrastive_loss"], ref_hinge(v, t, first["image_ids"]))
    assert torch.isfinite(out["meta_loss"])


def test_gpo_second_order_and_infonce_run():
    torch.manual_seed(0)
    cls = get_method("covlr")
    method = cls(cls.ModelOptions(embed_dim=8), cls.LossOptions(kind="infonce", alpha=0.1), DIMS)
    batch = {k: v.float() if v.is_floating_point() else v for k, v in make_batch(seed=7).items()}
    out = method(batch, STATE)
    assert {"contrastive_loss", "meta_loss", "meta_test_image", "meta_test_text", "temperature"} <= out.keys()
    (out["contrastive_loss"] + out["meta_loss"]).backward()
    gru = method.encoders.image_gpo.gru.weight_hh_l0
    assert gru.grad is not None and torch.isfinite(gru.grad).all()


def test_runs_under_autocast():
    torch.manual_seed(0)
    cls = get_method("covlr")
    method = cls(cls.ModelOptions(embed_dim=8), cls.LossOptions(), DIMS)
    batch = {k: v.float() if v.is_floating_point() else v for k, v in make_batch(seed=9).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CUDA path uses the same autocast machinery
        out = method(batch, STATE)
    assert out["meta_loss"].dtype == torch.float32  # relations are computed in float32
    (out["contrastive_loss"] + out["meta_loss"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_virtual_param_selection():
    names = ["image_proj.fc.weight", "image_proj.bn.bn.bias", "text_proj.weight", "image_gpo.linear.weight"]
    assert select_virtual(names, ["all"]) == names
    assert select_virtual(names, ["heads"]) == names[:3]
    assert select_virtual(names, ["text_proj", "image_proj.fc"]) == ["image_proj.fc.weight", "text_proj.weight"]
    with pytest.raises(ConfigError):
        select_virtual(names, ["image_proj.f"])
    with pytest.raises(ConfigError):
        make_covlr(meta_test_batch="other")


def test_relation_helpers():
    x = torch.randn(5, 3, dtype=torch.float64)
    rel = relation_matrix(x, "cosine", 0.5)
    assert torch.allclose(rel.diag(), torch.full((5,), 2.0, dtype=torch.float64))
    eu = relation_matrix(x, "euclidean")
    assert torch.allclose(-eu, torch.cdist(x, x), atol=1e-6)
    assert torch.equal(off_diagonal(torch.arange(9.0).view(3, 3)), torch.tensor([[1.0, 2], [3, 5], [6, 7]]))
    assert relation_kl(rel, rel).abs() < 1e-12 and relation_mse(rel, rel) == 0
    assert relation_kl(rel, relation_matrix(torch.randn(5, 3, dtype=torch.float64), "cosine", 0.5)) > 0
    assert first_occurrence(torch.tensor([4, 4, 2, 4, 2, 1])).tolist() == [True, False, True, False, False, True]
    # leaving pairs out == dropping them from each row by hand
    ids = torch.tensor([0, 0, 1, 2, 2])
    s, r = relation_matrix(torch.randn(5, 3, dtype=torch.float64), "cosine", 0.5), rel
    ignore = ids[:, None] == ids[None, :]
    want = []
    for i in range(5):
        keep = [j for j in range(5) if ids[j] != ids[i]]
        p = torch.softmax(r[i, keep], 0)
        want.append((p * (p.log() - torch.log_softmax(s[i, keep], 0))).sum())
    assert torch.allclose(relation_kl(s, r, ignore=ignore), torch.stack(want).mean())
    assert torch.allclose(relation_mse(s, r, ignore=ignore), ((s - r) ** 2)[~ignore].mean())


# ---- DDP: two gloo processes equal one process on the global batch -----------------------


def _ddp_worker(rank: int, world: int, init: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(Path(__file__).parent))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        method = make_covlr()
        method.eval()  # BatchNorm on running statistics: per-rank batch statistics would differ
        batch = make_batch(n=8, seed=8)
        share = {k: v[rank * 4:(rank + 1) * 4] for k, v in batch.items()}
        model = DistributedDataParallel(method, find_unused_parameters=True)
        out = model(share, STATE)
        (out["contrastive_loss"] + out["meta_loss"]).backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in method.named_parameters()}, os.path.join(out_dir, "grads.pt"))
        dist.barrier()  # both ranks done with every collective before either tears down
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: with a gloo group used by differentiable
    # all-reduces, C++ static destruction at exit sometimes aborts a finished worker.
    os._exit(0)


@pytest.mark.slow
def test_ddp_matches_single_process_global_batch():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, f"file://{d}/init", d), nprocs=2, join=True)
        ddp = torch.load(os.path.join(d, "grads.pt"))
    method = make_covlr()
    method.eval()
    single = method_grads(method, make_batch(n=8, seed=8))
    for n, g in single.items():
        assert torch.allclose(ddp[n], g, atol=1e-9, rtol=1e-6), n
