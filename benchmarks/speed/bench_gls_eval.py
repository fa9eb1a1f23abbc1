"""Evaluation time of GLS's three modes (G, L, GL) against gallery size, and on trained runs.

Synthetic (default): encoded splits of Flickr30K shape (36 regions + the CLS slot, captions of 12-20 tokens,
5 captions per image) are scored and ranked i2t + t2i by the evaluator
(:func:`featvlr.evaluation.scenarios.evaluate_cross_modal`) exactly as ``featvlr eval`` does for
``model.eval_mode`` G, L and GL. Encoding is excluded (the same for every mode). Prints one
row per gallery size and mode: seconds, the number of token-level (local) pair scores, and
the speed-up of GL over L.

    python -m benchmarks.speed.bench_gls_eval [--images 100 200 400] [--embed-dim 1024] [--device auto]

Trained runs (``--runs``): each run's best checkpoint is evaluated on its test split (i2t +
t2i) in every mode, GL also with the shortlists given by ``--gl``; prints rsum and wall time
of encoding and of scoring + ranking per run and mode, then mean and std over the runs.

    python -m benchmarks.speed.bench_gls_eval --runs runs/demo_gls_s0 runs/demo_gls_s1 --gl 50,100
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import pick_device, pin_threads, sync
from featvlr.evaluation.scenarios import evaluate_cross_modal, pairwise_score_fn
from featvlr.methods.base import FeatureDims
from featvlr.methods.gls import GLS, GLSLossOptions, GLSModelOptions


def encoded_split(n_images: int, d: int, device: torch.device, seed: int = 0):
    """Random unit tokens and globals shaped like GLS encoder outputs of an F30K-sized split."""
    g = torch.Generator().manual_seed(seed)
    n_texts = 5 * n_images
    lengths = torch.randint(12, 21, (n_texts,), generator=g)
    tmask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
    images = {"tokens": F.normalize(torch.randn(n_images, 37, d, generator=g), dim=-1),
              "mask": torch.ones(n_images, 37, dtype=torch.bool),
              "global": F.normalize(torch.randn(n_images, d, generator=g), dim=-1)}
    texts = {"tokens": F.normalize(torch.randn(n_texts, tmask.shape[1], d, generator=g), dim=-1) * tmask[..., None],
             "mask": tmask, "global": F.normalize(torch.randn(n_texts, d, generator=g), dim=-1)}
    # Globals correlated with the ground truth, so shortlists are not random.
    texts["global"] = F.normalize(texts["global"] + 2 * images["global"].repeat_interleave(5, 0), dim=-1)
    def move(x):
        return {k: v.to(device) for k, v in x.items()}

    return move(images), move(texts)


def run_mode(method: GLS, images, texts, split=None, **kwargs) -> tuple[dict[str, float], float]:
    """Score and rank i2t + t2i as :class:`featvlr.evaluation.evaluators.CrossModalEvaluator` does for the
    method's mode: ``(metrics, seconds)``."""
    device = images["mask" if "mask" in images else "global"].device
    if split is None:
        split = {"txt2img": np.repeat(np.arange(next(iter(images.values())).shape[0]), 5)}
    sync(device)
    t0 = time.perf_counter()
    plan = method.shortlist_plan(images, texts)
    if plan is None:
        res = evaluate_cross_modal(images, texts, split, ["i2t", "t2i"],
                                   score_fn=pairwise_score_fn(method, images, texts), **kwargs)
    else:
        res = evaluate_cross_modal(plan["images"], plan["texts"], split, ["i2t", "t2i"],
                                   rerank_fn=plan.get("rerank_fn"), shortlist=plan.get("shortlist"), **kwargs)
    sync(device)
    return res, time.perf_counter() - t0


def evaluate_runs(runs: list[str], extra_gl: list[str], device: torch.device, split_name: str = "") -> None:
    from featvlr.cache.store import FeatureStore
    from featvlr.evaluation.embed import embed_split
    from featvlr.inference.loading import load_method

    rows: dict[str, list[tuple[float, float, float]]] = {}
    print(f"{'run':<28} {'mode':<12} {'rsum':>7} {'encode s':>9} {'score+rank s':>13}")
    for run in runs:
        method, cfg = load_method(run, device)
        split = FeatureStore(cfg.data.cache).split(split_name or cfg.data.test_split or "test")
        base = method.model_opts
        modes = [("G", {}), ("L", {}), (f"GL {base.shortlist_i2t},{base.shortlist_t2i}", {})]
        for spec in extra_gl:
            a, b = (int(x) for x in spec.split(","))
            modes.append((f"GL {a},{b}", {"shortlist_i2t": a, "shortlist_t2i": b}))
        for name, kw in modes:
            method.model_opts = dataclasses.replace(base, eval_mode=name.split()[0], **kw)
            sync(device)
            t0 = time.perf_counter()
            images, texts = embed_split(method, split, batch_size=cfg.eval.batch_size, device=device,
                                        max_tokens=cfg.data.max_tokens)
            sync(device)
            encode = time.perf_counter() - t0
            res, seconds = run_mode(method, images, texts, split, chunk_elements=cfg.eval.chunk_elements)
            rows.setdefault(name, []).append((res["rsum"], encode, seconds))
            print(f"{run:<28} {name:<12} {res['rsum']:>7.1f} {encode:>9.2f} {seconds:>13.2f}")
        method.model_opts = base
    print(f"\nmean ± std over {len(runs)} runs")
    for name, vals in rows.items():
        r, e, t = np.array(vals).T
        print(f"{name:<12} rsum {r.mean():6.1f} ± {r.std():4.1f}   score+rank {t.mean():6.2f} ± {t.std():4.2f} s   "
              f"(+ encode {e.mean():5.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--embed-dim", type=int, default=1024)
    ap.add_argument("--shortlist", type=int, nargs=2, default=[50, 100], metavar=("I2T", "T2I"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", nargs="+", help="trained gls run folders: evaluate them instead")
    ap.add_argument("--gl", nargs="*", default=[], metavar="I2T,T2I", help="extra GL shortlist sizes (--runs)")
    ap.add_argument("--split", default="", help="split to evaluate with --runs (default: the run's test split)")
    args = ap.parse_args()
    pin_threads()
    device = pick_device(args.device)
    if args.runs:
        evaluate_runs(args.runs, args.gl, device, args.split)
        return
    opts = GLSModelOptions(embed_dim=args.embed_dim, layers=1, heads=4, ff_dim=args.embed_dim,
                           shortlist_i2t=args.shortlist[0], shortlist_t2i=args.shortlist[1])
    method = GLS(opts, GLSLossOptions(), FeatureDims(region_dim=8, n_regions=36, text_dim=8)).to(device).eval()
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, d={args.embed_dim}, "
          f"shortlists i2t {args.shortlist[0]} / t2i {args.shortlist[1]}")
    print(f"{'images':>7} {'texts':>7} {'mode':>4} {'seconds':>9} {'local pairs':>12} {'L/GL':>6}")
    for n in args.images:
        images, texts = encoded_split(n, args.embed_dim, device)
        n_txt = 5 * n
        local_pairs = {"G": 0, "L": 2 * n * n_txt,
                       "GL": n * min(args.shortlist[0], n_txt) + n_txt * min(args.shortlist[1], n)}
        times = {}
        for mode in ("G", "L", "GL"):
            method.model_opts = dataclasses.replace(method.model_opts, eval_mode=mode)
            times[mode] = run_mode(method, images, texts)[1]
        for mode in ("G", "L", "GL"):
            ratio = f"{times['L'] / times['GL']:6.1f}" if mode == "GL" else ""
            print(f"{n:>7} {n_txt:>7} {mode:>4} {times[mode]:>9.3f} {local_pairs[mode]:>12,} {ratio:>6}")


if __name__ == "__main__":
    main()
