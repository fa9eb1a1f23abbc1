"""Scores and logits in float32 under bf16 autocast, for every registered method.

Each method's training step runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
every score-like product (matmul, mm, bmm, einsum, cdist) called from the losses, the
token alignment or the methods must come out in float32, the Combiner's queries too, and
every loss must be a finite float32 scalar.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from featvlr.config import load_config
from featvlr.data import CaptionBatches
from featvlr.methods import StepState, get_method
from featvlr.methods.registry import list_methods
from featvlr.modules.combiner import Combiner
from featvlr.cache.store import FeatureStore
from featvlr.training.trainer import feature_dims

from synthetic import write_synthetic_cache
from test_mlcl import make_method as make_composed_method
from test_mlcl import write_composed_cache

ROOT = Path(__file__).resolve().parents[1] / "featvlr"
SCOPE = (ROOT / "losses", ROOT / "methods", ROOT / "modules" / "alignment.py")
PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.mm,
            torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.einsum, torch.cdist}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)

CROSS_MODAL = {"vse": [], "hrem": [], "covlr": [], "rvlr": ["model.teacher=features"],
               "gls-stage1": ["method=gls", "model.stage=1", "model.eval_mode=L"], "gls-stage2": ["method=gls"]}
COMPOSED = ("combiner", "mlcl")


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
    return {"cross": write_synthetic_cache(root / "syn.h5"), "composed": write_composed_cache(root / "comp.h5")}


def _cross_modal(name: str, cache: Path):
    extra = CROSS_MODAL[name]
    method = name if not name.startswith("gls") else "gls"
    cfg = load_config(None, [f"method={method}", f"data.cache={cache}", "data.dataset=synthetic",
                             "train.progress=false", *[e for e in extra if not e.startswith("method=")]])
    split = FeatureStore(cache).split("train")
    torch.manual_seed(0)
    m = get_method(method)(cfg.model, cfg.loss, feature_dims(split))
    if hasattr(m, "stage1_ready"):
        m.stage1_ready.fill_(True)  # stage 2 as if stage 1 were loaded
    batches = CaptionBatches(split, batch_size=16, seed=0)
    batches.set_epoch(0)
    return m, batches[0]


def _composed(name: str, cache: Path):
    from featvlr.data.composed import ComposedBatches

    m = make_composed_method(name, cache)
    batches = ComposedBatches(FeatureStore(cache).split("train"), batch_size=16, seed=0)
    batches.set_epoch(0)
    return m, batches[0]


def test_every_registered_method_is_covered():
    names = {n.split("-")[0] for n in CROSS_MODAL} | set(COMPOSED)
    package = {n for n in list_methods() if get_method(n).__module__.startswith("featvlr.")}  # not tests' toys
    assert names == package


@pytest.mark.parametrize("name", sorted(CROSS_MODAL) + list(COMPOSED))
def test_training_step_scores_in_float32_under_bf16_autocast(name, caches):
    if name in COMPOSED:
        method, batch = _composed(name, caches["composed"])
    else:
        method, batch = _cross_modal(name, caches["cross"])
    method.train()
    combiner_outputs: list[torch.dtype] = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: combiner_outputs.append(out.dtype))
             for mod in method.modules() if isinstance(mod, Combiner)]
    if name == "mlcl":
        original = method.combiner.levels

        def levels(*a, **k):
            lv = original(*a, **k)
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
    if name in COMPOSED:
        assert combiner_outputs
    sum(losses.values()).backward()
