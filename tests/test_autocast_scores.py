"""Scores and logits in float32 under bf16 autocast, for every method of the package.

The methods come from the registry (:func:`~featvlr.methods.list_methods`): every method of
the ``featvlr`` package at its defaults, plus the option variants of :data:`VARIANTS`, so a
new method file is covered without a line here. Each training step runs under
``torch.autocast("cpu", dtype=torch.bfloat16)`` on the first batch of a small synthetic cache
of the method's task; every score-like product (matmul, mm, bmm, einsum, cdist) called from
the losses, the token alignment or the methods must come out in float32, the Combiner's
queries too, and every loss must be a finite float32 scalar.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from synthetic import write_synthetic_cache
from test_mlcl import write_composed_cache
from torch.overrides import TorchFunctionMode

import featvlr
from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.data import CaptionBatches
from featvlr.data.composed import ComposedBatches
from featvlr.methods import StepState, create_method, get_method, list_methods
from featvlr.modules.combiner import Combiner
from featvlr.training.trainer import feature_dims

ROOT = Path(featvlr.__file__).resolve().parent
SCOPE = (ROOT / "losses", ROOT / "methods", ROOT / "modules" / "alignment.py")
PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.mm,
            torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.einsum, torch.cdist}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def package_methods() -> list[str]:
    """The registered methods defined in the package (not the toys that tests register)."""
    return [n for n in list_methods() if get_method(n).__module__.startswith("featvlr.")]


# Options beyond a method's defaults that take another path through its step: case -> (method, --set).
VARIANTS = {"gls-stage1": ("gls", ["model.stage=1", "model.eval_mode=L"])}
CASES = {name: (name, []) for name in package_methods()} | VARIANTS
BATCHES = {"cross_modal": CaptionBatches, "composed": ComposedBatches}


class ScoreRecorder(TorchFunctionMode):
    """Records the dtype of every product called from the scoped featvlr files."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in PRODUCTS and isinstance(out, torch.Tensor) and out.is_floating_point():
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
                frame = frame.f_back
            if frame is not None:
                path = Path(frame.f_code.co_filename).resolve()
                if any(path == s or s in path.parents for s in SCOPE):
                    self.records.append((f"{path.relative_to(ROOT.parent)}:{frame.f_lineno}", out.dtype))
        return out


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("autocast")
    return {"cross_modal": write_synthetic_cache(root / "syn.h5"), "composed": write_composed_cache(root / "comp.h5")}


def method_and_batch(case: str, caches: dict[str, Path]):
    """The case's method (seeded, built from a config on the cache of its task) and a batch."""
    name, extra = CASES[case]
    task = get_method(name).task
    cfg = load_config(None, [f"method={name}", f"data.cache={caches[task]}", "data.dataset=synthetic",
                             "train.progress=false", *extra])
    split = FeatureStore(caches[task]).split("train")
    torch.manual_seed(0)
    method = create_method(cfg, dims=feature_dims(split))
    if hasattr(method, "stage1_ready"):
        method.stage1_ready.fill_(True)  # GLS stage 2 as if stage 1 were loaded
    batches = BATCHES[task](split, batch_size=16, seed=0)
    batches.set_epoch(0)
    return method, batches[0]


def test_every_package_method_is_a_case():
    assert set(package_methods()) <= set(CASES)
    assert {"vse", "gls", "mlcl"} <= set(package_methods())


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_step_scores_in_float32_under_bf16_autocast(case, caches):
    method, batch = method_and_batch(case, caches)
    method.train()
    combiner_outputs: list[torch.dtype] = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: combiner_outputs.append(out.dtype))
             for mod in method.modules() if isinstance(mod, Combiner)]
    levels_of = getattr(getattr(method, "combiner", None), "levels", None)
    if levels_of is not None:  # MLCL's multi-level Combiner: every level's query

        def levels(*a, **k):
            lv = levels_of(*a, **k)
            combiner_outputs.extend(t.dtype for t in (lv.low, lv.mid, lv.high) if t is not None)
            return lv

        method.combiner.levels = levels
    recorder = ScoreRecorder()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
            out = method(batch, StepState(epoch=1, step=1))
    finally:
        for h in hooks:
            h.remove()
    losses = {k: v for k, v in out.items() if k.endswith("_loss")}
    assert losses
    for key, value in losses.items():
        assert value.dtype == torch.float32, (key, value.dtype)
        assert torch.isfinite(value).all(), key
    assert recorder.records, "no score product was recorded"
    low = sorted({where for where, dtype in recorder.records if dtype != torch.float32})
    assert not low, f"scores below float32 at {low}"
    assert all(d == torch.float32 for d in combiner_outputs), combiner_outputs
    if hooks or levels_of is not None:
        assert combiner_outputs
    sum(losses.values()).backward()
