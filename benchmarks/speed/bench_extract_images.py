"""Images/s of the raw-image path of `featvlr extract images` against the bare forward pass.

Writes N JPEG files (default 1,024 at 500x375, Flickr30K-sized), builds a randomly
initialised CLIP vision tower (``--preset base``: ViT-B/16 at 224, the shape of
clip-vit-base-patch16; ``small``: 4 layers of 256 for a CPU dry run) or loads
``--backbone FOLDER``, and times:

* **bare**: the backbone's forward pass on pre-processed pixel tensors already in pinned
  memory, with the same batch size, device and precision (the ceiling);
* **pipeline**: :meth:`VisionBackbone.iter_encode` from the files: decoding and
  preprocessing in ``--workers`` DataLoader processes, transfer, forward, fp16 outputs
  copied back to numpy (what the extract writes).

It prints both rates, their ratio (goal: at least 0.9) and peak memory: CUDA max allocated
and the peak RSS of this process and of the workers. Files are deleted afterwards.

    python -m benchmarks.speed.bench_extract_images                     # CUDA when present
    python -m benchmarks.speed.bench_extract_images --preset small --n 128 --workers 1 --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import peak_rss_mib, pin_threads, sync

PRESETS = {"base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=16, projection_dim=512),
           "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                         image_size=224, patch_size=32, projection_dim=256)}


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEG files with smooth colour fields plus noise (about a photo's decode cost)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b), np.sin((xx + yy) * c)], -1) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(p, quality=90)
        paths.append(p)
    return paths


def build_tower(folder: Path, preset: str) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = PRESETS[preset]
    CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)).save_pretrained(folder)
    side = cfg["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(folder)
    return folder


def bare_rate(bb, pixels, batch_size: int, repeats: int) -> float:
    """Images/s of ``bb.forward`` on pinned pre-processed tensors, outputs left on the device."""
    batches = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]
    bb.forward(batches[0])
    sync(bb.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            bb.forward(b)
    sync(bb.device)
    return repeats * len(pixels) / (time.perf_counter() - t0)


def pipeline_rate(bb, paths, batch_size: int, workers: int, repeats: int) -> float:
    """Images/s of ``bb.iter_encode`` from the files into fp16 numpy arrays."""
    regions = np.empty((len(paths), bb.n_regions, bb.dim), np.float16)
    pooled = np.empty((len(paths), bb.global_dim), np.float16)
    list(bb.iter_encode(paths[:batch_size], batch_size=batch_size, workers=0))       # warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for rows, reg, glob, bad in bb.iter_encode(paths, batch_size=batch_size, workers=workers):
            assert not bad
            regions[rows] = reg
            pooled[rows] = glob
    return repeats * len(paths) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="images")
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="base")
    ap.add_argument("--backbone", type=Path, default=None, help="a local vision model folder instead of a preset")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 1)))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    pin_threads()  # this process; the DataLoader workers are one-thread processes too

    import torch

    from featvlr.extract.vision_backbone import VisionBackbone

    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_images_"))
    try:
        t0 = time.perf_counter()
        (tmp / "images").mkdir()
        paths = write_images(tmp / "images", args.n, tuple(args.size))
        folder = args.backbone or build_tower(tmp / "tower", args.preset)
        print(f"{args.n} JPEGs {args.size[0]}x{args.size[1]} written in {time.perf_counter() - t0:.1f} s", flush=True)
        bb = VisionBackbone(folder, device=args.device, amp=True)
        print(f"backbone {bb.provenance()['class']} regions [{bb.n_regions}, {bb.dim}] global {bb.global_dim} "
              f"on {bb.device} ({'fp16 autocast' if bb.amp else 'fp32'}), batch {args.batch_size}, "
              f"{args.workers} workers", flush=True)
        from featvlr.extract.vision_backbone import decode_image

        pixels = bb.preprocess([decode_image(p) for p in paths])
        if bb.device.type == "cuda":
            pixels = pixels.pin_memory()
            torch.cuda.reset_peak_memory_stats()
        bare = bare_rate(bb, pixels, args.batch_size, args.repeats)
        del pixels
        pipe = pipeline_rate(bb, paths, args.batch_size, args.workers, args.repeats)
        result = {
            "device": str(bb.device), "n": args.n, "batch_size": args.batch_size, "workers": args.workers,
            "bare_images_per_s": round(bare, 1), "pipeline_images_per_s": round(pipe, 1),
            "ratio": round(pipe / bare, 3),
            "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if bb.device.type == "cuda" else None,
            "rss_peak_mib": round(peak_rss_mib(), 1),
            "workers_rss_peak_mib": round(peak_rss_mib(children=True), 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bare forward   {result['bare_images_per_s']:10.1f} images/s")
    print(f"pipeline       {result['pipeline_images_per_s']:10.1f} images/s   ({result['ratio']:.2f}x the bare "
          "forward; goal >= 0.9)")
    print(f"peak memory    CUDA {result['cuda_peak_mib']} MiB, RSS {result['rss_peak_mib']} MiB, "
          f"largest worker RSS {result['workers_rss_peak_mib']} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
