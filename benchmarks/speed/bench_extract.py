"""Speed and memory of `featvlr extract precomp` on a Flickr30K-shaped split.

Part 1 writes a synthetic test split (1,000 images x 36 x 2048 float32 regions, 5,000
captions), extracts it with the defaults (float16, ROUGE-L relevance) and prints the
seconds of each stage (regions, text, relevance), the text encoder's captions/s next to
the raw ``SentenceTransformer.encode`` rate on the same captions, and peak memory.

Part 2 (in a child process, so its peak RSS is its own) streams a region file several
times the read chunk (default 2 GiB against 64 MiB chunks) into a cache, sampling the
process RSS; it shows the resident memory stays near one chunk, and, for contrast, what a
plain memory-mapped read without releasing pages would hold. Files are deleted afterwards.

    python -m benchmarks.speed.bench_extract                    # both parts
    python -m benchmarks.speed.bench_extract --big-gb 0         # part 1 only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks.common import MiB, cpu_seconds, peak_rss_mib, pin_threads, proc_status, run_module

SUBJECTS = ["a man", "a woman", "two children", "a dog", "a group of people", "an old man", "a young girl",
            "a black dog", "three men", "a boy", "a cyclist", "a couple", "a worker", "a brown horse"]
VERBS = ["is walking", "is sitting", "are playing", "is running", "is standing", "are talking", "is riding a bike",
         "is jumping", "is climbing a rock", "is eating", "is reading a book", "are dancing"]
PLACES = ["on the beach", "in a park", "near the water", "on a busy street", "in front of a building",
          "in the snow", "on a grassy field", "inside a restaurant", "at a concert", "by the river"]
EXTRAS = ["", "", " while smiling", " in the sun", " with a red ball", " wearing a blue shirt",
          " next to a car", " under a tree"]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)} ."
            for _ in range(n)]


def write_npy(path: Path, shape: tuple[int, ...], seed: int = 0, piece_rows: int = 200) -> None:
    """A float32 .npy of ``shape`` written in pieces (never whole in memory)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    rng = np.random.default_rng(seed)
    for start in range(0, shape[0], piece_rows):
        stop = min(shape[0], start + piece_rows)
        arr[start:stop] = np.maximum(rng.standard_normal((stop - start, *shape[1:]), dtype=np.float32), 0)
    arr.flush()
    del arr


def rss_mib() -> tuple[float, float]:
    """(RssAnon, RssFile) of this process in MiB."""
    rss = proc_status("RssAnon", "RssFile")
    return rss["RssAnon"] / MiB, rss["RssFile"] / MiB


class RssSampler:
    """Peak RSS (anon + file-backed) sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = (0.0, 0.0, 0.0)
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            anon, file = rss_mib()
            if anon + file > self.peak[0]:
                self.peak = (anon + file, anon, file)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def part1(args, work: Path) -> None:
    from featvlr.cache.store import FeatureStore
    from featvlr.extract.precomp import extract_precomp
    from featvlr.extract.text_encoder import TextEncoder

    n, cpi = args.images, 5
    root = work / "f30k_precomp"
    root.mkdir()
    t = time.perf_counter()
    write_npy(root / "test_ims.npy", (n, 36, 2048))
    captions = synthetic_captions(cpi * n)
    (root / "test_caps.txt").write_text("\n".join(captions) + "\n")
    print(f"inputs: test_ims.npy {n}x36x2048 float32 ({(root / 'test_ims.npy').stat().st_size / MiB:.0f} MiB), "
          f"{len(captions)} captions, written in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    encoder = TextEncoder(device=args.device, batch_size=args.batch_size)
    print(f"text encoder: {encoder.name} on {encoder.device}, loaded in {time.perf_counter() - t:.1f} s "
          f"(torch threads: {__import__('torch').get_num_threads()}, CPU cores: {os.cpu_count()})")
    rss_before = peak_rss_mib()

    tracemalloc.start()
    t, cpu = time.perf_counter(), cpu_seconds()
    with RssSampler() as sampler:
        out = extract_precomp(root, work / "f30k.h5", text_model=encoder, progress=False,
                              chunk_bytes=args.chunk_mb * MiB)
    total, total_cpu = time.perf_counter() - t, cpu_seconds() - cpu
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stages = json.loads(FeatureStore(out).attrs["stage_seconds"])["test"]
    size = out.stat().st_size

    t, cpu = time.perf_counter(), cpu_seconds()
    encoder.model.encode(captions, batch_size=args.batch_size, show_progress_bar=False)
    raw, raw_cpu = time.perf_counter() - t, cpu_seconds() - cpu

    print(f"\nextract_precomp, float16, relevance computed: {total:.1f} s in all ({total_cpu:.1f} CPU-s), "
          f"cache {size / MiB:.0f} MiB")
    print(f"  regions    {stages['images']:7.2f} s   {n / stages['images']:8.0f} images/s "
          f"({n * 36 * 2048 * 4 / MiB / stages['images']:.0f} MiB/s read)")
    print(f"  text       {stages['texts']:7.2f} s   {len(captions) / stages['texts']:8.0f} captions/s "
          "(tokens + pooled, written)")
    print(f"  relevance  {stages['relevance']:7.2f} s   ROUGE-L {len(captions)} x {n} "
          f"({len(captions) * len(captions) / stages['relevance'] / 1e6:.1f} M caption pairs/s)")
    print(f"  raw SentenceTransformer.encode on the same captions: {raw:.2f} s = {len(captions) / raw:.0f} "
          f"captions/s (pooled only; {raw_cpu:.1f} CPU-s)")
    print(f"memory: peak RSS {peak_rss_mib():.0f} MiB (process, model included; {rss_before:.0f} MiB before the "
          f"extract); sampled peak during the extract {sampler.peak[0]:.0f} MiB "
          f"(anon {sampler.peak[1]:.0f}, file-backed {sampler.peak[2]:.0f}); tracemalloc peak "
          f"{traced_peak / MiB:.0f} MiB")


def part2_child(args) -> None:
    """Stream a big region file into a cache; print JSON figures (runs in its own process)."""
    import featvlr.extract.precomp as precomp
    from featvlr.cache.store import CacheWriter

    work = Path(args.workdir)
    n = int(args.big_gb * (1 << 30) // (36 * 2048 * 4))
    ims = work / "big_ims.npy"
    t = time.perf_counter()
    write_npy(ims, (n, 36, 2048), seed=1, piece_rows=100)
    wrote = time.perf_counter() - t
    results = {"images": n, "file_mib": ims.stat().st_size / MiB, "chunk_mib": args.chunk_mb, "write_s": wrote}
    for mode in ("release", "keep_pages"):
        if mode == "keep_pages":
            precomp._release = lambda *a, **k: None          # plain mmap reading, for contrast
        features = precomp.open_features(ims)
        split = precomp._Split("big", ims, ims, None, features, [], None)
        base_anon, base_file = rss_mib()
        out = work / f"big_{mode}.h5"
        t = time.perf_counter()
        with RssSampler() as sampler, CacheWriter(out, overwrite=True, command="bench") as w:
            precomp._write_images(w, split, np.float16, args.chunk_mb * MiB, progress=False)
        seconds = time.perf_counter() - t
        results[mode] = {"seconds": seconds, "mib_per_s": results["file_mib"] / seconds,
                         "peak_rss_mib": sampler.peak[0], "peak_anon_mib": sampler.peak[1],
                         "peak_file_mib": sampler.peak[2], "baseline_rss_mib": base_anon + base_file}
        del features, split
        out.unlink()
    ims.unlink()
    print(json.dumps(results))


def part2(args, work: Path) -> None:
    proc = run_module(__spec__.name, ["--child", "--workdir", str(work.resolve()), "--big-gb", str(args.big_gb),
                                      "--chunk-mb", str(args.chunk_mb)])
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(proc.returncode)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nbounded memory: {r['images']} images x 36 x 2048 float32 = {r['file_mib']:.0f} MiB .npy "
          f"({r['file_mib'] / r['chunk_mib']:.0f} x the {r['chunk_mib']} MiB read chunk), regions stage only, "
          "float16 out")
    for mode, label in (("release", "featvlr (mmap + release pages)"), ("keep_pages", "plain mmap read (contrast)")):
        m = r[mode]
        print(f"  {label:32s} {m['seconds']:6.1f} s  {m['mib_per_s']:5.0f} MiB/s  "
              f"peak RSS {m['peak_rss_mib']:6.0f} MiB "
              f"(anon {m['peak_anon_mib']:.0f}, file-backed {m['peak_file_mib']:.0f}; "
              f"{m['baseline_rss_mib']:.0f} before)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="images in the part-1 split (5 captions each)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk-mb", type=int, default=64, help="bytes of .npy rows read at a time, MiB")
    ap.add_argument("--big-gb", type=float, default=2.0, help="size of the part-2 region file, GiB (0: skip)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, deleted)")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    pin_threads()
    if args.child:
        part2_child(args)
        return
    print("load average at start: %.1f %.1f %.1f" % os.getloadavg())
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_part1:
            part1(args, work)
        if args.big_gb > 0:
            part2(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("load average at end: %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
