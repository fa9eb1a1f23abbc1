"""RVLR: distillation losses against direct computations, lambda, the teachers and their cache."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from synthetic import write_synthetic_cache

import featvlr.methods.teachers as teachers
from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.core.checkpoint import resolve_checkpoint
from featvlr.core.errors import ConfigError
from featvlr.data import CaptionBatches
from featvlr.inference.loading import load_method
from featvlr.losses.distill import DISTANCES, RepresentationDistillation, StructureDistillation, wasserstein_1d
from featvlr.losses.structure import off_diagonal
from featvlr.methods import StepState, create_method, get_method
from featvlr.training.trainer import feature_dims, train


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("cache") / "syn.h5")


@pytest.fixture(scope="module")
def vse_run(cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "base"
    train(quick(cache, "method=vse", epochs=1), run)
    return run


def quick(cache: Path, *extra: str, epochs: int = 1):
    return load_config(None, ["method=rvlr", f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=32",
                              f"train.epochs={epochs}", "train.batch_size=32", "train.progress=false",
                              "train.eval_every=0", "data.test_split=", *extra])


def sgd_step(module: torch.nn.Module, lr: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p -= lr * p.grad


def first_batch(cache: Path) -> dict[str, torch.Tensor]:
    batches = CaptionBatches(FeatureStore(cache).split("train"), batch_size=32, seed=0, region_dropout=0.2)
    batches.set_epoch(0)
    return batches[0]


# -- the losses against direct computations ---------------------------------------------

def _direct(student, teacher_text, teacher_image, lam, tau, distance):
    """Loop-by-loop reference: relations over i != j, then the distance."""
    def rel(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T / tau

    n = student.shape[0]
    f, t, i = rel(student), rel(teacher_text), rel(teacher_image)
    e = lam * t + (1 - lam) * i
    rows = lambda m: [np.array([m[r, c] for c in range(n) if c != r]) for r in range(n)]  # noqa: E731

    def dist(a, b):
        if distance == "mae":
            return np.mean([np.abs(x - y).mean() for x, y in zip(rows(a), rows(b))])
        if distance == "mse":
            return np.mean([((x - y) ** 2).mean() for x, y in zip(rows(a), rows(b))])
        return np.mean([scipy.stats.wasserstein_distance(x, y) for x, y in zip(rows(a), rows(b))])

    return dist(f, e), dist(i, e), dist(t, e)


@pytest.mark.parametrize("distance", ["mae", "mse", "wd"])
def test_structure_distances_match_direct_computation(distance):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(7, 5, generator=g, dtype=torch.float64)
    tt = torch.randn(7, 6, generator=g, dtype=torch.float64)
    ti = torch.randn(7, 9, generator=g, dtype=torch.float64)
    loss = StructureDistillation(distance=distance, temperature=0.5, init_lambda=0.3).double()
    out = loss([student], tt, ti)
    kd, kdi, kdt = _direct(student.numpy(), tt.numpy(), ti.numpy(), 0.3, 0.5, distance)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert out["kdi"].item() == pytest.approx(kdi, rel=1e-6)
    assert out["kdt"].item() == pytest.approx(kdt, rel=1e-6)
    both = loss([student, 2 * ti[:, :5]], tt, ti)["kd"].item()  # "both": the mean over students
    kd2 = _direct((2 * ti[:, :5]).numpy(), tt.numpy(), ti.numpy(), 0.3, 0.5, distance)[0]
    assert both == pytest.approx((kd + kd2) / 2, rel=1e-6)


def test_weighted_wasserstein_matches_scipy():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 6, generator=g, dtype=torch.float64), 2 * torch.randn(4, 9, generator=g, dtype=torch.float64)
    wu, wv = torch.rand(4, 6, generator=g, dtype=torch.float64), torch.rand(4, 9, generator=g, dtype=torch.float64)
    got = wasserstein_1d(u, v, wu, wv)
    want = [scipy.stats.wasserstein_distance(u[r], v[r], wu[r], wv[r]) for r in range(4)]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10)
    # gradient of W1 between equal-size samples: sign(sorted u - sorted v) / m at each order statistic
    u.requires_grad_(True)
    wasserstein_1d(u, v[:, :6]).sum().backward()
    su, order = u.detach().sort(-1)
    sv = v[:, :6].sort(-1).values
    want_grad = torch.zeros_like(u).scatter(-1, order, torch.sign(su - sv) / 6)
    assert torch.allclose(u.grad, want_grad)


def test_representation_distillation_is_one_direction_soft_id_ce():
    g = torch.Generator().manual_seed(2)
    s, t = F.normalize(torch.randn(6, 4, generator=g), dim=-1), F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    got = RepresentationDistillation(temperature=0.1, learnable=False)(s, t, ids)
    logp = torch.log_softmax(s @ t.T / 0.1, dim=1)
    want = -np.mean([logp[i, ids == ids[i]].mean().item() for i in range(6)])
    assert got.item() == pytest.approx(want, rel=1e-5)


# -- lambda and the relation temperature ---------------------------------------------------

def test_lambda_moves_under_the_structure_loss_and_stays_in_unit_interval():
    g = torch.Generator().manual_seed(3)
    tt, ti = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    student = tt.clone()  # the student's relations are the text teacher's: lambda should go up
    loss = StructureDistillation(distance="mae", init_lambda=0.5)
    seen = [loss.lam.item()]
    for _ in range(40):
        loss.zero_grad()
        out = loss([student], tt, ti)
        (2 * out["kd"] + out["kdi"] + out["kdt"]).backward()
        sgd_step(loss, lr=2.0)
        seen.append(loss.lam.item())
    assert seen[-1] > 0.9 and all(0.0 < x < 1.0 for x in seen)
    # with MAE the two mixture terms sum to mean|I - T| whatever lambda: they give it no gradient
    loss.zero_grad()
    out = loss([student], tt, ti)
    (out["kdi"] + out["kdt"]).backward()
    assert abs(loss.lambda_logit.grad.item()) < 1e-5
    # with MSE they pull lambda toward 1/2
    mse = StructureDistillation(distance="mse", init_lambda=0.9)
    out = mse([student], tt, ti)
    (out["kdi"] + out["kdt"]).backward()
    assert mse.lambda_logit.grad.item() > 0


def test_relation_temperature_is_fixed_or_clamped():
    fixed = StructureDistillation()
    assert "log_tau" not in dict(fixed.named_parameters())
    free = StructureDistillation(learnable_temperature=True, tau_max=1.0)
    x = torch.randn(8, 4)
    for _ in range(30):  # the structure terms shrink as tau2 grows: the clamp stops it
        free.zero_grad()
        out = free([x], torch.randn(8, 4), torch.randn(8, 4))
        (out["kd"] + out["kdi"] + out["kdt"]).backward()
        sgd_step(free, lr=5.0)
    assert free.tau.item() <= 1.0 + 1e-6 and free.log_tau.item() > 0.0  # it did try to grow


# -- teachers ----------------------------------------------------------------------------

def test_feature_teacher_receives_no_gradient(cache):
    cfg = quick(cache, "model.teacher=features")
    method = create_method(cfg, dims=feature_dims(FeatureStore(cache).split("train")))
    batch = first_batch(cache)
    batch["pooled_text"].requires_grad_(True)  # read only by the teacher
    out = method(batch, StepState())
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    assert batch["pooled_text"].grad is None
    assert {"image_distill_loss", "text_distill_loss", "structure_loss", "contrastive_loss"} <= set(out)
    assert {"image_mixture", "text_mixture"} <= set(out) and not any(k.endswith("mixture_loss") for k in out)
    assert method.teacher_text_proj.weight.grad is not None and method.teacher_image_proj.weight.grad is not None
    assert method.structure.lambda_logit.grad is not None
    assert method.encoders.text_proj.weight.grad.abs().sum() > 0


def test_run_teacher_is_frozen_and_looked_up_by_row(cache, vse_run, tmp_path):
    cfg = get_method("rvlr").prepare(quick(cache, f"model.teacher={vse_run}"), tmp_path / "r", load_method)
    path = Path(cfg.model.teacher_cache)
    assert path.parent == Path(str(cache) + ".teachers") and cfg.model.teacher_dim == 32
    method = create_method(cfg, dims=feature_dims(FeatureStore(cache).split("train")))
    method.attach_runs(load_method)  # what the trainer does once the method is built
    batch = first_batch(cache)
    teacher, _ = load_method(vse_run)
    with torch.no_grad():
        img, txt = method.teacher_rows(batch)
        want_txt = teacher.encode_texts(batch)
    assert torch.allclose(txt, want_txt, atol=2e-3)  # float16 on disk
    before = resolve_checkpoint(vse_run).read_bytes()
    out = method(batch, StepState())
    sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    table = method._table
    assert not table.image.requires_grad and not table.text.requires_grad and table.image.grad is None
    assert resolve_checkpoint(vse_run).read_bytes() == before
    # the student started from the teacher's encoders (the paper's stage 2)
    assert torch.equal(method.encoders.text_proj.weight.detach(), teacher.encoders.text_proj.weight)


def test_teacher_cache_is_reused_not_recomputed(cache, vse_run, monkeypatch):
    calls = []
    real = teachers.compute_teacher_features
    monkeypatch.setattr(teachers, "compute_teacher_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    ckpt = resolve_checkpoint(vse_run)
    first = teachers.ensure_teacher_cache(ckpt, cache, "train", load_method)
    mtime = first.stat().st_mtime_ns
    second = teachers.ensure_teacher_cache(ckpt, cache, "train", load_method)
    assert first == second and second.stat().st_mtime_ns == mtime and len(calls) <= 1
    n = len(calls)
    teachers.ensure_teacher_cache(ckpt, cache, "train", load_method)
    assert len(calls) == n  # a third call reads the same file
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a retrained teacher: new file
    third = teachers.ensure_teacher_cache(ckpt, cache, "train", load_method)
    assert third != first and len(calls) == n + 1
    table = teachers.load_teacher_cache(third)
    split = FeatureStore(cache).split("train")
    assert table.image.shape == (split.n_images, 32) and table.text.shape == (split.n_texts, 32)
    assert not list(third.parent.glob("*.partial"))


def test_two_stages_in_one_command(cache, tmp_path):
    run = tmp_path / "rvlr"
    result = train(quick(cache, "model.teacher=base"), run)
    assert (run / "teacher" / "ckpt" / "best.pt").exists() and (run / "ckpt" / "best.pt").exists()
    method, cfg = load_method(run)
    assert cfg.method == "rvlr" and cfg.model.teacher == str(run / "teacher")
    assert Path(cfg.model.teacher_cache).exists() and result.epochs_run == 1
    teacher_mtime = (run / "teacher" / "ckpt" / "last.pt").stat().st_mtime_ns
    cfg2 = get_method("rvlr").prepare(quick(cache, "model.teacher=base"), run, load_method)  # reuses the finished base
    assert (run / "teacher" / "ckpt" / "last.pt").stat().st_mtime_ns == teacher_mtime
    assert cfg2.model.teacher_cache == cfg.model.teacher_cache


def test_default_teachers_are_uni_modal_features_in_one_stage(cache, tmp_path):
    cfg = quick(cache)
    assert cfg.model.teacher == "features"
    rvlr = get_method("rvlr")
    assert rvlr.stages(cfg, tmp_path / "r") == [] and rvlr.prepare(cfg, tmp_path / "r") == cfg
    method = create_method(cfg, dims=feature_dims(FeatureStore(cache).split("train")))
    assert not method.starts_from_teacher
    batch = first_batch(cache)
    img, txt = method.teacher_rows(batch)
    assert torch.equal(txt, batch["pooled_text"].float())  # the frozen sentence vectors
    assert img.shape[1] == batch["regions"].shape[-1]  # an image-only feature
    for config_file in sorted(Path(__file__).parents[1].glob("configs/*rvlr*.yaml")):
        assert load_config(config_file, []).model.teacher == "features", config_file
    with pytest.raises(ConfigError, match="model.teacher"):
        rvlr.prepare(quick(cache, "model.teacher="), tmp_path / "r")


def test_mixture_terms_are_diagnostics_unless_trained(cache):
    dims = feature_dims(FeatureStore(cache).split("train"))
    batch = first_batch(cache)
    cfg = quick(cache, "loss.reduction=mean", "loss.structure_relations=absolute")
    torch.manual_seed(0)
    method = create_method(cfg, dims=dims)
    out = method(batch, StepState(epoch=1))
    assert not out["image_mixture"].requires_grad and not out["text_mixture"].requires_grad
    with torch.no_grad():  # with MAE they sum to mean|I - T| over off-diagonal pairs: a constant
        img, txt = method.teacher_rows(batch)
        rel = lambda x: F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T / 0.07  # noqa: E731
        off = ~torch.eye(len(img), dtype=torch.bool)
        want = (rel(img) - rel(txt))[off].abs().mean()
    assert (out["image_mixture"] + out["text_mixture"]).item() == pytest.approx(want.item(), rel=1e-4)
    trained = quick(cache, "loss.mixture=train", "loss.reduction=mean", "loss.structure_relations=absolute")
    torch.manual_seed(0)
    method = create_method(trained, dims=dims)
    out2 = method(batch, StepState(epoch=1))
    assert out2["image_mixture_loss"].item() == pytest.approx(out["image_mixture"].item(), rel=1e-5)
    assert out2["text_mixture_loss"].item() == pytest.approx(out["text_mixture"].item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["hinge", "infonce"])
def test_distillation_scale_per_reduction(cache, kind):
    dims = feature_dims(FeatureStore(cache).split("train"))
    batch = first_batch(cache)
    outs = {}
    for reduction in ("mean", "sum", "auto"):
        cfg = quick(cache, f"loss.kind={kind}", f"loss.reduction={reduction}")
        torch.manual_seed(0)
        outs[reduction] = create_method(cfg, dims=dims)(batch, StepState(epoch=1))
    b = len(batch["image_ids"])
    auto = 2 * b * 0.07 if kind == "hinge" else 1.0  # the hinge's units: both directions, summed, in cosines
    for key in ("image_distill_loss", "text_distill_loss", "structure_loss"):
        mean = outs["mean"][key].item()
        assert outs["sum"][key].item() == pytest.approx(b * mean, rel=1e-5)
        assert outs["auto"][key].item() == pytest.approx(auto * mean, rel=1e-5)
    assert outs["auto"]["contrastive_loss"].item() == pytest.approx(outs["mean"]["contrastive_loss"].item())


def test_hinge_scale_uses_the_learned_distillation_temperature(cache):
    dims = feature_dims(FeatureStore(cache).split("train"))
    batch = first_batch(cache)
    outs = {}
    for reduction in ("mean", "auto"):
        cfg = quick(cache, "loss.kind=hinge", f"loss.reduction={reduction}")
        torch.manual_seed(0)
        method = create_method(cfg, dims=dims)
        with torch.no_grad():
            method.representation.log_tau.fill_(np.log(0.05))  # drifted from the configured 0.07
        outs[reduction] = method(batch, StepState(epoch=1))
    b = len(batch["image_ids"])
    for key in ("image_distill_loss", "text_distill_loss", "structure_loss"):
        assert outs["auto"][key].item() == pytest.approx(2 * b * 0.05 * outs["mean"][key].item(), rel=1e-5)
    # the scale is a constant factor: it passes no gradient to the temperature
    cfg = quick(cache, "loss.kind=hinge", "loss.image_distill_weight=0", "loss.text_distill_weight=0")
    method = create_method(cfg, dims=dims)
    method(batch, StepState(epoch=1))["structure_loss"].backward()
    assert method.representation.log_tau.grad is None


# -- the structure term and the ranking space's geometry ---------------------------------

def test_standardized_relations_ignore_offset_and_scale_of_the_student():
    """A row's offset or scale costs nothing: the term sees only its neighbour pattern."""
    from featvlr.losses.distill import relation_distance, standardize_rows

    g = torch.Generator().manual_seed(0)
    rel = torch.randn(9, 9, generator=g, dtype=torch.float64)
    target = torch.randn(9, 9, generator=g, dtype=torch.float64)
    shifted = 3.0 * rel + torch.randn(9, 1, generator=g, dtype=torch.float64)  # per-row offset, one scale
    assert torch.allclose(standardize_rows(shifted), standardize_rows(rel), atol=1e-6)
    for distance in DISTANCES:
        std = relation_distance(rel, target, distance, "standardized")
        moved = relation_distance(shifted, target, distance, "standardized")
        assert moved.item() == pytest.approx(std.item(), rel=1e-5)
        # the absolute form is not invariant: this test can tell the two apart
        assert relation_distance(shifted, target, distance).item() != pytest.approx(
            relation_distance(rel, target, distance).item(), rel=1e-3)
    s = torch.randn(8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    d = relation_distance(s, target[:8, :8], "mae", "standardized")
    (gs,) = torch.autograd.grad(d, s)
    off = ~torch.eye(8, dtype=torch.bool)
    row_sums = (gs * off).sum(1)  # d/d(offset of row i): zero, the term cannot move a row's mean
    assert torch.allclose(row_sums, torch.zeros(8, dtype=torch.float64), atol=1e-9)


def test_standardized_term_does_not_fix_the_students_mean_cosine():
    """Embeddings lifted along a shared direction (every cosine mapped to
    (a^2 cos + b^2) / (a^2 + b^2): a tighter cone, the same neighbours) cost the same under the
    standardized term; the absolute term prefers the lift whose mean cosine is the teachers'."""
    g = torch.Generator().manual_seed(1)
    teacher_t = torch.randn(1, 16, generator=g) + 0.9 * torch.randn(24, 16, generator=g)
    teacher_i = torch.randn(1, 12, generator=g) + 0.9 * torch.randn(24, 12, generator=g)
    x = F.normalize(torch.randn(24, 8, generator=g), dim=-1)

    def lifted(b: float) -> torch.Tensor:  # an extra coordinate b shared by every row
        return F.normalize(torch.cat([x, torch.full((24, 1), b)], dim=-1), dim=-1)

    def mean_cos(y):
        return off_diagonal(y @ y.t()).mean().item()

    lifts = [0.0, 0.5, 1.0, 2.0]
    assert mean_cos(lifted(2.0)) > mean_cos(lifted(0.0)) + 0.5  # the lift changes the geometry a lot
    for form in ("standardized", "absolute"):
        loss = StructureDistillation(form=form, learnable_lambda=False)
        values = [loss([lifted(b)], teacher_t, teacher_i)["kd"].item() for b in lifts]
        if form == "standardized":
            assert max(values) - min(values) < 1e-4 * max(values)
        else:  # the absolute term has a preferred mean cosine: the teacher mixture's
            assert max(values) - min(values) > 0.1 * max(values)


def test_fused_structure_head_is_apart_from_the_ranking_space(cache):
    """loss.structure_space=fused: the structure term relates the fused pair vectors of an own
    head; the retrieval embeddings are not the student matrix, and the head gets the gradient."""
    dims = feature_dims(FeatureStore(cache).split("train"))
    batch = first_batch(cache)
    cfg = quick(cache, "loss.structure_space=fused", "loss.image_distill_weight=0", "loss.text_distill_weight=0",
                "loss.contrastive_weight=0")
    torch.manual_seed(0)
    method = create_method(cfg, dims=dims)
    v, t = method.encode_images(batch), method.encode_texts(batch)
    students = method.students(v, t)
    assert len(students) == 1 and students[0].shape == v.shape
    assert not torch.allclose(F.normalize(students[0], dim=-1), v) and not torch.allclose(
        F.normalize(students[0], dim=-1), t)
    out = method(batch, StepState(epoch=1))
    out["structure_loss"].backward()
    assert method.fusion[0].weight.grad.abs().sum() > 0
    emb = quick(cache, "loss.structure_space=embeddings")
    assert create_method(emb, dims=dims).fusion is None
    with pytest.raises(ConfigError, match="structure_space"):
        create_method(emb, loss_opts=dataclasses.replace(emb.loss, structure_space="cls"), dims=dims)


def test_geometry_is_logged(cache):
    dims = feature_dims(FeatureStore(cache).split("train"))
    batch = first_batch(cache)
    cfg = quick(cache)
    method = create_method(cfg, dims=dims)
    out = method(batch, StepState(epoch=1))
    t = method.encode_texts(batch)
    want_t = off_diagonal(t @ t.t()).mean()
    assert out["text_cosine"].item() == pytest.approx(want_t.item(), rel=1e-4, abs=1e-6)
    for key in ("image_cosine", "text_cosine", "teacher_cosine"):
        assert out[key].numel() == 1 and not out[key].requires_grad and not key.endswith("_loss")


# -- DDP: one step on 2 gloo ranks equals one process on the global batch -----------------

def _grads_after_one_step(cache: Path, rank: int, world: int):
    torch.manual_seed(0)
    cfg = quick(cache, "model.teacher=features")
    split = FeatureStore(cache).split("train")
    method = create_method(cfg, dims=feature_dims(split))
    batches = CaptionBatches(split, batch_size=32, seed=0, region_dropout=0.0, rank=rank, world_size=world)
    batches.set_epoch(1)
    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(method, find_unused_parameters=True)
    out = model(batches[0], StepState(epoch=1, world_size=world))
    total = sum(v for k, v in out.items() if k.endswith("_loss"))
    total.backward()
    return total.item(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, world: int, init_file: str, cache: str, result_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loss, grads = _grads_after_one_step(Path(cache), rank, world)
        torch.save({"loss": loss, "grads": grads}, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done with every collective before either tears down
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: with a gloo group used by differentiable
    # all-reduces, C++ static destruction at exit sometimes aborts a finished worker.
    os._exit(0)


@pytest.mark.slow
def test_ddp_two_gloo_ranks_match_one_process(cache, tmp_path):
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_ddp_worker, args=(2, init_file, str(cache), str(tmp_path)), nprocs=2, join=True)
    loss, grads = _grads_after_one_step(cache, 0, 1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(loss, rel=1e-5)
        assert set(got["grads"]) == set(grads)
        for name, g in grads.items():
            assert torch.allclose(got["grads"][name], g, rtol=1e-4, atol=1e-6), name


def test_a_global_image_teacher_needs_global_vectors(cache):
    split = FeatureStore(cache).split("train")
    with pytest.raises(ConfigError, match=r"model.teacher_image=global: the cache has no global image vectors"):
        create_method(quick(cache, "model.teacher_image=global"), dims=feature_dims(split))
