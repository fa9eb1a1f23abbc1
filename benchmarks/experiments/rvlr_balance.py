"""RVLR's loss balance: the encoder-gradient norm of each weighted term, per base loss.

RVLR (Yang et al., TIP 2024) adds representation distillation (``L_iic``, ``L_ttc``) and
structure distillation (``L_kd``) to a base cross-modal loss with the weights 1, 1, 2, 2. In
the paper all terms are means over the batch and the base is X-VLM's ITC (a mean soft-id
InfoNCE at tau 0.07), so each distillation term's gradient is about 1-2x the base's. This
script builds the ``rvlr`` method on a feature cache (uni-modal ``features`` teachers), draws
training batches of ``--batch`` captions, and for each base loss (``hinge``, ``infonce``) and
each ``loss.reduction`` asked for prints, averaged over ``--batches`` batches:

- the L2 norm of the gradient of every weighted ``*_loss`` term with respect to the
  student's encoders (``encoders.*``: the heads every term shares);
- its ratio to the base term's norm (``distill/base``).

The hinge is measured past its warm-up (hardest negatives), as it trains for most epochs.
``--steps N`` first trains the method N optimiser steps on its whole loss (AdamW, the
config's learning rate and clipping), to see the balance during training rather than at
initialisation. ``loss.reduction: sum`` is the balance before the hinge's distillation
terms were put in its units (``auto``); with InfoNCE ``auto`` is ``mean``, the paper's.

    python -m benchmarks.experiments.rvlr_balance [--cache features/demo.h5] [--batch 128]
        [--reductions sum auto] [--batches 4] [--steps 0]

The demo cache is written by ``featvlr demo --data-only``. Measured on it (B = 128, 3
batches, after 150 training steps; distillation / base for image KD, text KD, structure)::

    infonce  auto (= mean, the paper's)    0.24  0.20  1.81
    hinge    auto (x 2 * B * tau)          0.16  0.20  2.08
    hinge    sum  (x B, the old default)   0.78  0.80  7.09

At initialisation (0 steps) the hinge's ``sum`` gives 0.77 / 3.58 / 21.7 and ``auto`` 0.11 /
0.50 / 3.04.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import pin_threads, training_step
from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.data import CaptionBatches
from featvlr.methods import StepState, create_method
from featvlr.training.trainer import feature_dims

BASE = "contrastive_loss"


def build(cache: Path, base: str, reduction: str, batch: int, seed: int):
    cfg = load_config(None, ["method=rvlr", f"data.cache={cache}", "model.teacher=features", f"loss.kind={base}",
                             f"loss.reduction={reduction}", f"train.batch_size={batch}", "data.test_split="])
    split = FeatureStore(cache).split(cfg.data.train_split)
    torch.manual_seed(seed)
    method = create_method(cfg, dims=feature_dims(split))
    batches = CaptionBatches(split, batch_size=batch, seed=seed, region_dropout=cfg.data.region_dropout)
    batches.set_epoch(0)
    return method, batches, cfg


def term_norms(method, batch, state: StepState) -> dict[str, float]:
    params = [p for n, p in method.named_parameters() if n.startswith("encoders.") and p.requires_grad]
    out = method(batch, state)
    norms = {}
    for key, value in out.items():
        if not key.endswith("_loss") or not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norms[key] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return norms


def pretrain(method, batches, cfg, steps: int) -> None:
    step = training_step(method, torch.optim.AdamW(method.parameters(), lr=cfg.train.lr), clip=cfg.train.grad_clip)
    for i in range(steps):
        step(batches[i % len(batches)], StepState(epoch=1, step=i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("features/demo.h5"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bases", nargs="+", default=["hinge", "infonce"])
    ap.add_argument("--reductions", nargs="+", default=["sum", "auto"])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.cache.exists():
        raise SystemExit(f"{args.cache}: no such feature cache (featvlr demo --data-only writes the demo one)")
    pin_threads()
    print(f"encoder-gradient norms, B={args.batch}, mean over {args.batches} batches, "
          f"after {args.steps} training steps")
    for base in args.bases:
        for reduction in args.reductions:
            method, batches, cfg = build(args.cache, base, reduction, args.batch, args.seed)
            pretrain(method, batches, cfg, args.steps)
            sums: dict[str, float] = {}
            for i in range(args.batches):
                state = StepState(epoch=1, step=args.steps + i)
                for key, value in term_norms(method, batches[(args.steps + i) % len(batches)], state).items():
                    sums[key] = sums.get(key, 0.0) + value / args.batches
            ref = sums[BASE]
            print(f"\nbase {base:7s} reduction {reduction:4s}")
            print(f"  {'term':22s} {'grad norm':>10s} {'/ base':>8s}")
            for key, value in sums.items():
                print(f"  {key:22s} {value:10.3f} {value / ref:8.2f}")


if __name__ == "__main__":
    main()
