"""Latency of one search query on CPU: query encode (text encoder + trained head) plus search
of a generated gallery, p50 and p99, exact chunked top-k against FAISS indexes.

The query side is the path of ``featvlr search RUN "text"``: one caption through
all-MiniLM-L6-v2 (the bundled folder, offline) and a ``vse`` head (random weights: its cost
does not depend on training) into a ``--dim`` embedding. Galleries are generated clustered
unit vectors of ``--dim`` (default 1,000, 25,000 and 200,000 items); queries are noisy copies
of gallery items, so the table also gives each index's top-10 overlap with exact search.
Search is :func:`featvlr.inference.search.embedding_top_items` over a gallery checked once
(what an embedding method's ``featvlr search`` runs on its gallery index) or
:class:`featvlr.inference.FaissIndex` (built once per gallery, as the run's gallery index is;
build time shown apart).

    python -m benchmarks.speed.bench_search [--sizes 1000,25000,200000] [--dim 256]
        [--indexes exact,flat,ivf,hnsw] [--queries 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common import pin_threads


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 200), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def encode_latency(dim: int, n: int) -> list[float]:
    """Milliseconds of one caption through the text encoder and a vse head, ``n`` times."""
    from featvlr.config import load_config
    from featvlr.extract.text_encoder import TextEncoder
    from featvlr.inference.text import captions_batch
    from featvlr.methods import create_method
    from featvlr.methods.base import FeatureDims

    enc = TextEncoder(device="cpu", batch_size=1)
    cfg = load_config(None, ["method=vse", f"model.embed_dim={dim}"])
    head = create_method(cfg, dims=FeatureDims(region_dim=2048, n_regions=36, text_dim=enc.dim)).eval()
    words = "a dog running on the beach with a red ball near two children and a boat".split()
    rng = np.random.default_rng(0)
    out = []
    with torch.no_grad():
        for i in range(n + 3):
            text = " ".join(rng.choice(words, rng.integers(4, len(words))))
            t0 = time.perf_counter()
            head.encode_texts(captions_batch(enc, [text]))
            if i >= 3:  # warm-up
                out.append(1e3 * (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,25000,200000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--indexes", default="exact,flat,ivf,hnsw")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pin_threads(args.threads)
    kinds = [k.strip() for k in args.indexes.split(",") if k.strip()]
    if set(kinds) - {"exact"}:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    from featvlr.inference import FaissIndex
    from featvlr.inference.search import embedding_top_items

    enc_ms = encode_latency(args.dim, min(args.queries, 100))
    e50, e99 = percentiles(enc_ms)
    print(f"query encode (all-MiniLM-L6-v2 + vse head -> {args.dim}-d, 1 caption, CPU, {args.threads} thread(s)): "
          f"p50 {e50:.2f} ms  p99 {e99:.2f} ms")
    print(f"{'gallery':>8} {'index':>6} {'build s':>8} {'search p50':>10} {'p99':>8} {'total p50':>9} {'p99':>8}"
          f" {'top-10 overlap':>14}")
    rng = np.random.default_rng(1)
    for n in (int(s) for s in args.sizes.split(",")):
        gallery = clustered(n, args.dim)
        src = rng.integers(0, n, args.queries)
        q = gallery[src] + 0.05 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g_t = torch.from_numpy(gallery)
        exact_rows = embedding_top_items(torch.from_numpy(q), g_t, args.k)[1].numpy()
        for kind in kinds:
            if kind == "exact":
                build = 0.0
                run = lambda x, _g=g_t: embedding_top_items(x, _g, args.k, gallery_finite=True)  # noqa: E731
            else:
                t0 = time.perf_counter()
                index = FaissIndex(gallery, kind)
                build = time.perf_counter() - t0
                run = lambda x, _i=index: _i.search(x, args.k)  # noqa: E731
            ms, rows = [], []
            for i in range(args.queries):
                x = torch.from_numpy(q[i:i + 1])
                t0 = time.perf_counter()
                rows.append(run(x)[1].numpy()[0])
                ms.append(1e3 * (time.perf_counter() - t0))
            s50, s99 = percentiles(ms)
            total = [m + enc_ms[i % len(enc_ms)] for i, m in enumerate(ms)]
            t50, t99 = percentiles(total)
            overlap = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows, exact_rows)])
            print(f"{n:>8} {kind:>6} {build:>8.2f} {s50:>8.2f}ms {s99:>6.2f}ms {t50:>7.2f}ms {t99:>6.2f}ms "
                  f"{overlap:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
