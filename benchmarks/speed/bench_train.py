"""Training throughput of `vse` on a Flickr30K-shaped cache, against a bare PyTorch loop.

Prints: pairs/s of the engine (trainer, loader, logging), pairs/s of the same step in a bare
loop over pre-built tensors (no loader, no trainer), their ratio (the engine's overhead), and
the loader's items/s alone.

    python -m benchmarks.speed.bench_train [--images 2000] [--steps 20] [--batch 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import pin_threads, write_f30k_shaped
from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.data import CaptionBatches
from featvlr.methods import StepState, create_method
from featvlr.training.trainer import feature_dims, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    pin_threads()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "f30k_shaped.h5"
        t = time.perf_counter()
        write_f30k_shaped(cache, args.images, token_lengths=(10, 18), pooled_dtype=np.float32)
        print(f"cache: {args.images} images x 36 x 2048 fp16, {5 * args.images} captions x 384-d tokens "
              f"({cache.stat().st_size / 2**20:.0f} MiB, written in {time.perf_counter() - t:.1f} s)")
        sets = [f"data.cache={cache}", "data.test_split=", "train.eval_every=0", "train.epochs=1",
                f"train.batch_size={args.batch}", f"train.max_steps_per_epoch={args.steps}",
                "train.progress=false", "model.embed_dim=1024"]
        cfg = load_config(None, sets)
        split = FeatureStore(cache).split("train").load_in_memory()

        # 1. the loader alone
        batches = CaptionBatches(split, batch_size=args.batch, seed=0, region_dropout=0.2,
                                 max_batches=args.steps)
        t = time.perf_counter()
        prebuilt = [batches[b] for b in range(len(batches))]
        load_rate = args.steps * args.batch / (time.perf_counter() - t)

        # 2. the bare step over pre-built batches
        torch.manual_seed(0)
        method = create_method(cfg, dims=feature_dims(split))
        opt = torch.optim.AdamW(method.parameters(), lr=5e-4, weight_decay=1e-4)
        state = StepState(epoch=1)
        for b in prebuilt[:2]:  # warm-up
            loss = method(b, state)["contrastive_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        t = time.perf_counter()
        for b in prebuilt:
            loss = method(b, state)["contrastive_loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), 2.0)
            opt.step()
        bare = args.steps * args.batch / (time.perf_counter() - t)

        # 3. the engine: featvlr.training.trainer.train, loader included
        with tempfile.TemporaryDirectory() as runs:
            t = time.perf_counter()
            train(load_config(None, sets + ["train.epochs=1"]), Path(runs) / "r")
            engine_wall = time.perf_counter() - t
        print(f"loader alone:           {load_rate:8.0f} pairs/s")
        print(f"bare PyTorch step:      {bare:8.0f} pairs/s")
        engine = args.steps * args.batch / engine_wall
        print(f"engine (whole train()): {engine:8.0f} pairs/s  ({engine_wall:.1f} s incl. setup and checkpoint)")
        print(f"overhead ratio bare/engine: {bare / engine:.2f}x")


if __name__ == "__main__":
    main()
