"""Training speed of ``mlcl`` against the ``combiner`` baseline on a composed cache.

For each method: the batches of :class:`featvlr.data.composed.ComposedBatches` (batch 1024
by default, augmented views from the cache), forward + backward + AdamW step, timed over
whole epochs after one warm-up epoch; then one dev evaluation
(:func:`featvlr.evaluation.composed.evaluate_composed_method`). Prints epochs/s, steps/s,
triplets/s and the evaluation time. CPU threads: ``--threads`` (default 1; it used to be 2,
so pass ``--threads 2`` to compare with older figures).

    python -m benchmarks.speed.bench_mlcl [--cache features/demo_composed.h5] [--batch 1024]
        [--epochs 5] [--threads 1] [--device auto]
    python -m benchmarks.speed.bench_mlcl --synthetic 28225 --dim 640   # CIRR-sized, RN50x4 width

``--synthetic N`` writes a temporary cache of N training triplets of width ``--dim`` (text
and image vectors of one size, as with CLIP) instead of reading ``--cache``; the demo cache
is built first when missing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import pick_device, pin_threads, sync, training_step
from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.config import config_from_dict
from featvlr.data import move_to
from featvlr.data.composed import ComposedBatches
from featvlr.evaluation.composed import evaluate_composed_method
from featvlr.methods import StepState, create_method
from featvlr.training.trainer import feature_dims


def synthetic_cache(path: Path, n_train: int, dim: int, n_aug: int = 4, seed: int = 0) -> Path:
    """Random CIRR-shaped cache: images in sets of 6, n_train train and n_train // 7 val queries."""
    rng = np.random.default_rng(seed)
    with CacheWriter(path, text_encoder="synthetic", text_dim=dim) as w:
        for split, n_q in (("train", n_train), ("val", max(60, n_train // 7))):
            n_img = max(12, n_q // 2 // 6 * 6)
            g = rng.standard_normal((n_img, dim)).astype(np.float32)
            w.write(f"images/{split}/global", g)
            w.write(f"images/{split}/global_aug",
                    (g[:, None] + 0.1 * rng.standard_normal((n_img, n_aug, dim))).astype(np.float32))
            ref = rng.integers(0, n_img, n_q)
            tgt = (ref // 6) * 6 + (ref % 6 + rng.integers(1, 6, n_q)) % 6
            w.write(f"texts/{split}/pooled", rng.standard_normal((n_q, dim)).astype(np.float32))
            w.write(f"texts/{split}/offsets", np.zeros(n_q + 1, dtype=np.int64))
            w.write(f"texts/{split}/image_index", np.full(n_q, -1, dtype=np.int64))
            w.write(f"composed/{split}/reference", ref.astype(np.int64))
            w.write(f"composed/{split}/target", tgt.astype(np.int64))
            w.write(f"composed/{split}/subsets", ((ref // 6) * 6)[:, None] + np.arange(6)[None])
    return path


def bench(name: str, cache: Path, *, batch: int, epochs: int, device: torch.device, dev_split: str) -> dict:
    cfg = config_from_dict({"method": name})
    store = FeatureStore(cache)
    split = store.split("train").load_in_memory()
    torch.manual_seed(0)
    method = create_method(cfg, dims=feature_dims(split)).to(device)
    batches = ComposedBatches(split, batch_size=batch, seed=0)
    opt = torch.optim.AdamW(method.param_groups(2e-5, 0.0), lr=2e-5, weight_decay=0.0)
    step = training_step(method, opt, amp=device.type == "cuda", clip=None)

    def run_epoch(e: int) -> None:
        batches.set_epoch(e)
        for b in range(len(batches)):
            step(move_to(batches[b], device), StepState(epoch=e))
        sync(device)

    run_epoch(0)  # warm-up
    t0 = time.perf_counter()
    for e in range(1, epochs + 1):
        run_epoch(e)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    evaluate_composed_method(method, store.split(dev_split), dataset="cirr", device=device)
    return {"method": name, "params": sum(p.numel() for p in method.parameters()), "steps": len(batches),
            "epochs_s": epochs / seconds, "steps_s": epochs * len(batches) / seconds,
            "triplets_s": epochs * len(batches) * batch / seconds, "eval_s": time.perf_counter() - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="features/demo_composed.h5")
    ap.add_argument("--synthetic", type=int, default=0, help="use a temporary cache of this many train triplets")
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dev-split", default="val")
    args = ap.parse_args()
    pin_threads(args.threads)
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            cache = synthetic_cache(Path(tmp) / "synthetic.h5", args.synthetic, args.dim)
            where = f"synthetic cache, {args.synthetic} train triplets, d = {args.dim}"
        else:
            cache = Path(args.cache)
            if not cache.exists():
                from featvlr.app.demo import build_demo_caches

                build_demo_caches(cache.parent)
            where = str(cache)
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        print(f"{where}; batch {args.batch}; {device}{threads}")
        print(f"{'method':<10} {'params':>10} {'steps/ep':>8} {'epochs/s':>9} {'steps/s':>8} {'triplets/s':>11} "
              f"{'eval s':>7}")
        for name in ("combiner", "mlcl"):
            r = bench(name, cache, batch=args.batch, epochs=args.epochs, device=device, dev_split=args.dev_split)
            print(f"{r['method']:<10} {r['params']:>10,} {r['steps']:>8} {r['epochs_s']:>9.2f} {r['steps_s']:>8.2f} "
                  f"{r['triplets_s']:>11.0f} {r['eval_s']:>7.2f}")


if __name__ == "__main__":
    main()
