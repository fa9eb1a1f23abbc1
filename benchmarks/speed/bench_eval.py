"""Speed and memory of featvlr's exact chunked evaluation, and FAISS recall against exact search.

Part 1 (COCO 5K shape): 5,000 images x 25,000 captions, random unit vectors (d = 1024), i2t and
t2i Recall@K / medr / meanr. Prints the time and the peak extra memory of the chunked path
(from a full similarity matrix, and from the embeddings), the time of a per-query argsort
loop (the way the VSE-family reference code ranks) on the same matrix, their ratio, and
whether the ranks and metrics are identical.

Part 2 (FAISS): a synthetic clustered gallery (default 200,000 vectors, d = 128) and queries
that are noisy copies of gallery items; for flat, IVF and HNSW indexes, the build and search
times, the overlap of the top-10 with exact search, and R@1/R@10 of the source item, next to
featvlr's exact chunked top-k.

    python -m benchmarks.speed.bench_eval [--images 5000] [--dim 1024] [--gallery 200000] [--skip-loop]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from benchmarks.common import pin_threads, proc_status
from featvlr.evaluation.scenarios import evaluate_cross_modal
from featvlr.retrieval import DenseScores, EmbeddingScores, faiss_search, group_positives, ranks, ranks_from_topk, topk
from featvlr.retrieval.metrics import cross_modal_recall


def measure(fn):
    """``(result, seconds, peak extra resident bytes)``: the peak RSS is reset before the call."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    base = proc_status("VmRSS")["VmRSS"]
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = proc_status("VmHWM")["VmHWM"] - base if resettable else float("nan")
    return out, seconds, peak


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def loop_ranks(sims: np.ndarray, per: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The reference code's ranking: one full argsort per query (vse_infty ``i2t``/``t2i``)."""
    n_img = sims.shape[0]
    r_i2t = np.zeros(n_img, dtype=np.int64)
    for i in range(n_img):
        inds = np.argsort(sims[i])[::-1]
        r_i2t[i] = min(np.where(inds == c)[0][0] for c in range(per * i, per * i + per))
    sims_t = sims.T
    r_t2i = np.zeros(per * n_img, dtype=np.int64)
    for i in range(n_img):
        for j in range(per):
            inds = np.argsort(sims_t[per * i + j])[::-1]
            r_t2i[per * i + j] = np.where(inds == i)[0][0]
    return r_i2t, r_t2i


def loop_metrics(r_i2t: np.ndarray, r_t2i: np.ndarray) -> dict[str, float]:
    out = {}
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = float(100.0 * np.mean(r < k))
        out[f"{name}_medr"] = float(math.floor(np.median(r)) + 1)
        out[f"{name}_meanr"] = float(r.mean() + 1)
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def bench_cross_modal(n_img: int, dim: int, chunk: int, skip_loop: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = unit(rng, n_img, dim)
    # unit vectors; each caption is its image plus a large random unit offset (recalls well
    # below 100, no exact ties)
    txt = np.repeat(img, 5, axis=0) + 8.0 * unit(rng, 5 * n_img, dim)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    txt = txt.astype(np.float32)
    t0 = time.perf_counter()
    sims = torch.from_numpy(img) @ torch.from_numpy(txt).t()
    t_mm = time.perf_counter() - t0
    sims_np = sims.numpy()
    print(f"== COCO 5K shape: {n_img} x {5 * n_img} scores, d = {dim}, torch threads = {torch.get_num_threads()}, "
          f"chunk_elements = {chunk:,}")
    print(f"similarity matrix: {sims_np.nbytes / 2**20:.0f} MiB, full matmul {t_mm:.2f} s")

    t2i_idx = np.arange(5 * n_img) // 5
    pos = group_positives(t2i_idx, n_img)

    def chunked():
        a = ranks(DenseScores(sims), pos, chunk_elements=chunk)
        b = ranks(DenseScores(sims, by="cols"), torch.from_numpy(t2i_idx), chunk_elements=chunk)
        return a, b

    (c_i2t, c_t2i), t_chunk, mem_chunk = measure(chunked)
    metrics, t_metrics, _ = measure(lambda: cross_modal_recall(sims_np, chunk_elements=chunk))
    print(f"chunked ranks from the matrix:     {t_chunk:8.2f} s   peak extra memory {mem_chunk / 2**20:8.1f} MiB")
    print(f"cross_modal_recall (API, matrix):  {t_metrics:8.2f} s")
    emb, t_emb, mem_emb = measure(lambda: evaluate_cross_modal(torch.from_numpy(img), torch.from_numpy(txt), None,
                                                               chunk_elements=chunk))
    print(f"evaluate_cross_modal (embeddings): {t_emb:8.2f} s   peak extra memory {mem_emb / 2**20:8.1f} MiB "
          "(matmul by blocks included, no full matrix)")
    if skip_loop:
        return
    (l_i2t, l_t2i), t_loop, mem_loop = measure(lambda: loop_ranks(sims_np))
    same_ranks = np.array_equal(l_i2t, c_i2t.numpy()) and np.array_equal(l_t2i, c_t2i.numpy())
    lm = loop_metrics(l_i2t, l_t2i)
    same_metrics = lm == metrics
    print(f"per-query argsort loop:            {t_loop:8.2f} s   peak extra memory {mem_loop / 2**20:8.1f} MiB")
    print(f"speed-up of the chunked ranks over the loop: {t_loop / t_chunk:6.1f}x "
          f"(API call incl. metrics: {t_loop / t_metrics:.1f}x)")
    print(f"identical ranks: {same_ranks}; identical metrics: {same_metrics}")
    print("metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    emb_rsum = emb["rsum"]
    print(f"rsum from embeddings {emb_rsum:.4f} vs matrix {metrics['rsum']:.4f}")


def clustered(rng: np.random.Generator, n: int, d: int, n_centers: int, spread: float) -> np.ndarray:
    centers = unit(rng, n_centers, d)
    x = centers[rng.integers(0, n_centers, size=n)] + spread * unit(rng, n, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_faiss(n_gallery: int, dim: int, n_queries: int, chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    # overlapping clusters and queries far enough from their source that neighbours compete
    gallery = clustered(rng, n_gallery, dim, 1000, 1.0)
    src = rng.choice(n_gallery, size=n_queries, replace=False)
    queries = gallery[src] + 2.0 * unit(rng, n_queries, dim)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    k = 10
    print(f"\n== FAISS: gallery {n_gallery:,} x d {dim}, {n_queries:,} queries (noisy copies of gallery items), "
          f"top-{k}")
    q_t, g_t = torch.from_numpy(queries), torch.from_numpy(gallery)
    (_, ex_i), t_exact, _ = measure(lambda: topk(EmbeddingScores(q_t, g_t), k, chunk_elements=chunk))
    exact_ids = ex_i.numpy()
    r = ranks(EmbeddingScores(q_t, g_t), torch.from_numpy(src), chunk_elements=chunk)
    print(f"{'backend':<28}{'build+search s':>15}{'top-10 overlap':>16}{'R@1':>8}{'R@10':>8}")
    r1, r10 = 100 * float((r < 1).float().mean()), 100 * float((r < 10).float().mean())
    print(f"{'exact chunked torch.topk':<28}{t_exact:>15.2f}{1.0:>16.4f}{r1:>8.2f}{r10:>8.2f}")
    ivf = {"nlist": 1024, "train_size": 50_000}
    configs = [("flat", {}), ("ivf", {**ivf, "nprobe": 8}), ("ivf", {**ivf, "nprobe": 32}),
               ("hnsw", {"hnsw_m": 16, "ef_construction": 80, "ef_search": 64}),
               ("hnsw", {"hnsw_m": 16, "ef_construction": 80, "ef_search": 256})]
    for index, opts in configs:
        (_, ids), t, _ = measure(lambda index=index, opts=opts: faiss_search(queries, gallery, k, index=index, **opts))
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids)])
        rr = ranks_from_topk(ids, torch.from_numpy(src))
        label = index + ("" if not opts else " " + ",".join(f"{a}={b}" for a, b in opts.items()
                                                             if a != "train_size"))
        print(f"{label:<28}{t:>15.2f}{overlap:>16.4f}{100 * float((rr < 1).float().mean()):>8.2f}"
              f"{100 * float((rr < 10).float().mean()):>8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--chunk-elements", type=int, default=50_000_000)
    p.add_argument("--skip-loop", action="store_true", help="skip the slow per-query argsort loop")
    p.add_argument("--gallery", type=int, default=200_000)
    p.add_argument("--faiss-dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pin_threads()
    print(f"cpu cores: {os.cpu_count()}")
    bench_cross_modal(args.images, args.dim, args.chunk_elements, args.skip_loop, args.seed)
    if not args.skip_faiss:
        bench_faiss(args.gallery, args.faiss_dim, args.queries, args.chunk_elements, args.seed)


if __name__ == "__main__":
    main()
