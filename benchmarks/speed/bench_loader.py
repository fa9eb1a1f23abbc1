"""Training-batch throughput at Flickr30K shapes: every read path against the bare step.

Writes a generated cache of Flickr30K's training shapes (29,000 images x 36 x 2048 float16
regions, 145,000 captions of 8-16 MiniLM tokens x 384, pooled vectors; 5.6 GB) and prints
pairs/s of building batch 128 (VSE-infinity region dropout 0.2, tokens padded, float32 on
the training device) from each placement, with the previous path (numpy copies from HDF5
reads) for reference, and the ratio to one bare ``vse`` training step at the same shapes::

    python -m benchmarks.speed.bench_loader                   # Flickr30K shapes (needs ~6 GB disk)
    python -m benchmarks.speed.bench_loader --images 3000     # quicker
    python -m benchmarks.speed.bench_loader --keep /data/f30k_shaped.h5   # reuse the cache file

One thread, as in the tests (``--threads`` to change). The disk path is measured after one
warm pass, i.e. with the cache in the page cache, as in the second epoch of a run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import f30k_cache, peak_rss_mib, pick_device, pin_threads, sync
from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.data import BatchStream, CaptionBatches, region_batch, text_batch, to_tensors
from featvlr.methods import StepState, create_method
from featvlr.training.trainer import feature_dims


def previous_path(split, batches: CaptionBatches, b: int) -> dict:
    """How batches were built before: numpy float32 copies of HDF5 reads, dropout by
    ``take_along_axis`` (kept to show what the new path replaces)."""
    captions = batches.caption_rows(b)
    images = batches.image_index[captions]
    uniform = np.random.default_rng([batches.seed, batches.epoch, b]).random((batches.batch_size, 36))
    batch = region_batch(split, images, dropout=batches.region_dropout, uniform=uniform)
    batch.update(text_batch(split, captions))
    return to_tensors(batch)


def rate(fn, n_batches: int, batch: int) -> float:
    t = time.perf_counter()
    for b in range(n_batches):
        fn(b)
    return n_batches * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=29000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="cache file to write once and reuse")
    args = ap.parse_args()
    pin_threads(args.threads)
    device = pick_device("auto")
    print(f"torch {torch.__version__}, {args.threads} thread(s), training device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = f30k_cache(args.keep, Path(tmp), args.images)
        store = FeatureStore(cache)
        split = store.split("train")
        print(f"cache: {split.n_images} images x 36 x 2048 fp16, {split.n_texts} captions, batch {args.batch}")
        n = args.batches
        rows = []

        def measure(name: str, placement: str, prefetch: int = 0) -> None:
            batches = CaptionBatches(split, batch_size=args.batch, seed=0, region_dropout=0.2, placement=placement,
                                     device=device, max_batches=n)
            stream = BatchStream(batches, device, prefetch=prefetch)
            for _ in stream:  # warm: page cache, buffers
                pass
            t = time.perf_counter()
            batches.set_epoch(1)
            for _ in stream:
                pass
            sync(device)
            rows.append((name, n * args.batch / (time.perf_counter() - t)))

        old = CaptionBatches(split, batch_size=args.batch, seed=0, region_dropout=0.2, max_batches=n)
        old.set_epoch(0)
        rows.append(("previous path: HDF5 reads + numpy copies", rate(lambda b: previous_path(split, old, b),
                                                                       min(n, 20), args.batch)))
        measure("disk (memory map of the cache)", "disk")
        measure("disk, built ahead in a thread", "disk", prefetch=2)
        t = time.perf_counter()
        split.load_in_memory()  # read once; the memory placements below share these arrays
        print(f"read the split into RAM in {time.perf_counter() - t:.1f} s")
        measure("memory (RAM)", "memory")
        if device.type == "cuda":
            measure("device-resident (GPU)", "device")
        table = CaptionBatches(split, batch_size=args.batch, seed=0, placement="memory").tables["regions"]
        idx = torch.randint(0, table.n_rows, (args.batch * 36,))
        out = torch.empty((args.batch * 36, 2048), dtype=torch.float16)
        t = time.perf_counter()
        for _ in range(n):
            torch.index_select(table.tensor, 0, idx, out=out)
        rows.append(("bare fp16 region gather (index_select)", n * args.batch / (time.perf_counter() - t)))

        # the bare vse step at these shapes, on batches built beforehand
        cfg = load_config(None, ["model.embed_dim=1024"])
        method = create_method(cfg, dims=feature_dims(split)).to(device)
        opt = torch.optim.AdamW(method.parameters(), lr=5e-4)
        batches = CaptionBatches(split, batch_size=args.batch, seed=0, region_dropout=0.2, placement="memory")
        pre = [{k: v.to(device) for k, v in batches[b].items()} for b in range(6)]
        state = StepState(epoch=1)

        def step(b: int) -> None:
            loss = method(pre[b % len(pre)], state)["contrastive_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(0)
        step_rate = rate(step, 6, args.batch)
        sync(device)
        print(f"{'path':<44} {'pairs/s':>9} {'loader time / step time':>24}")
        for name, r in rows:
            print(f"{name:<44} {r:9.0f} {step_rate / r:24.3f}")
        print(f"{'bare vse step (embed 1024), for the ratio':<44} {step_rate:9.0f}")
        print(f"peak resident memory: {peak_rss_mib() / 1024:.2f} GiB")
        store.close()


if __name__ == "__main__":
    main()
