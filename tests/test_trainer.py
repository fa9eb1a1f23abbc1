"""The trainer: resume equivalence, checkpoints, NaN handling, DDP equivalence, learning."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from synthetic import write_synthetic_cache

from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.core.checkpoint import load_checkpoint
from featvlr.core.errors import ConfigError, InputError
from featvlr.data import CaptionBatches
from featvlr.inference.loading import load_method
from featvlr.methods import Method, StepState, create_method, register_method
from featvlr.training.trainer import TrainingDiverged, feature_dims, train


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("cache") / "syn.h5")


def quick(cache: Path, *extra: str, epochs: int = 2):
    return load_config(None, [f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=32",
                              f"train.epochs={epochs}", "train.batch_size=32", "train.progress=false",
                              "train.lr_steps=[1]", "eval.dev_scenarios=[i2t, t2i]",
                              "eval.scenarios=[i2t, t2i]", *extra])


def test_resume_gives_the_same_weights(cache, tmp_path):
    extra = ("train.eval_every=0", "data.test_split=")
    train(quick(cache, *extra, epochs=3), tmp_path / "full")
    train(quick(cache, *extra, epochs=1), tmp_path / "part")
    train(quick(cache, *extra, epochs=3), tmp_path / "part", resume=True)
    a = load_checkpoint(tmp_path / "full" / "ckpt" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "ckpt" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_same_seed_same_numbers_and_refuses_to_overwrite(cache, tmp_path):
    extra = ("train.eval_every=0", "data.test_split=")
    train(quick(cache, *extra, epochs=1), tmp_path / "a")
    train(quick(cache, *extra, epochs=1), tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "ckpt" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "ckpt" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="--resume"):
        train(quick(cache, *extra, epochs=1), tmp_path / "a")


def test_checkpoint_is_plain_data(cache, tmp_path):
    train(quick(cache, "train.eval_every=0", "data.test_split=", epochs=1), tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "ckpt" / "best.pt", weights_only=True)
    assert ckpt["config"]["method"] == "vse" and isinstance(ckpt["config"], dict)
    method, cfg = load_method(tmp_path / "r")
    assert cfg.model.embed_dim == 32 and not method.training
    assert not any(".partial" in p.name for p in (tmp_path / "r" / "ckpt").iterdir())


def test_selection_on_test_needs_a_flag(cache, tmp_path):
    with pytest.raises(ConfigError, match="allow_test_selection"):
        train(quick(cache, "train.select_split=test"), tmp_path / "r")


@dataclass
class _NoOpts:
    pass


@register_method("nan_after_one_step")
class _NanMethod(Method):
    """Test method whose loss turns NaN on its second step."""

    def __init__(self, model, loss, dims):
        super().__init__(model, loss, dims)
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, state: StepState):
        value = self.w.sum() * (float("nan") if state.step >= 1 else 1.0)
        return {"toy_loss": value}


def test_nan_loss_stops_with_a_clear_message(cache, tmp_path):
    cfg = load_config(None, ["method=nan_after_one_step", f"data.cache={cache}", "train.batch_size=32",
                             "train.progress=false", "train.epochs=1", "train.eval_every=0", "data.test_split="])
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 1, step 1"):
        train(cfg, tmp_path / "r")


def test_vse_learns_far_above_chance(cache, tmp_path):
    cfg = quick(cache, "train.epochs=6", "train.lr_steps=[5]", "train.lr=1e-3", "data.test_split=test")
    result = train(cfg, tmp_path / "r")
    untrained = create_method(cfg, dims=feature_dims(FeatureStore(cache).split("train")))
    from featvlr.evaluation.options import EvalOptions
    from featvlr.tasks import evaluate_method

    untrained.eval()
    with torch.no_grad():
        base = evaluate_method(untrained, FeatureStore(cache).split("test"), EvalOptions.from_config(cfg, final=False),
                               ["i2t", "t2i"], "cpu")
    test = result.test_metrics
    rsum = test["metrics"]["rsum"]
    # chance rsum on 16 images: 6 recalls near (1 + 5 + 10) / 16 * 100 each pair -> 200
    assert rsum > 400 and rsum > base["rsum"] + 100
    assert (tmp_path / "r" / "eval" / "test.json").exists()
    assert (tmp_path / "r" / "log.jsonl").exists()


# -- DDP: one step on 2 gloo ranks equals one process on the global batch ---------------

def _grads_after_one_step(cfg, cache, rank: int, world: int):
    torch.manual_seed(0)
    split = FeatureStore(cache).split("train")
    method = create_method(cfg, dims=feature_dims(split))
    batches = CaptionBatches(split, batch_size=32, seed=0, region_dropout=0.2, rank=rank, world_size=world)
    batches.set_epoch(1)  # hardest-negative phase
    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(method, find_unused_parameters=True)
    out = model(batches[0], StepState(epoch=1, step=0, world_size=world))
    out["contrastive_loss"].backward()
    return out["contrastive_loss"].item(), {n: p.grad.clone() for n, p in method.named_parameters()
                                            if p.grad is not None}


def _ddp_worker(rank: int, world: int, init_file: str, cache: str, result_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, ["model.embed_dim=32"])
        loss, grads = _grads_after_one_step(cfg, Path(cache), rank, world)
        torch.save({"loss": loss, "grads": grads}, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done with every collective before either tears down
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: with a gloo group used by differentiable
    # all-reduces, C++ static destruction at exit sometimes aborts a finished worker.
    os._exit(0)


def test_ddp_two_gloo_ranks_match_one_process(cache, tmp_path):
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_ddp_worker, args=(2, init_file, str(cache), str(tmp_path)), nprocs=2, join=True)
    cfg = load_config(None, ["model.embed_dim=32"])
    loss, grads = _grads_after_one_step(cfg, cache, 0, 1)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(loss, rel=1e-5)
        assert set(got["grads"]) == set(grads)
        for name, g in grads.items():
            assert torch.allclose(got["grads"][name], g, rtol=1e-4, atol=1e-6), name


def test_epoch_hook_sees_dev_metrics_and_can_stop_the_run(cache, tmp_path):
    seen = []

    def hook(epoch, record):
        seen.append((epoch, record["dev/rsum"]))
        return epoch == 2

    result = train(quick(cache, epochs=4), tmp_path / "run", on_epoch_end=hook)
    assert [e for e, _ in seen] == [1, 2]
    assert result.stopped_early and result.epochs_run == 2 and not result.test_metrics
    assert load_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")["epoch"] == 2
    assert (tmp_path / "run" / "ckpt" / "best.pt").exists()
    assert not (tmp_path / "run" / "eval" / "test.json").exists()
