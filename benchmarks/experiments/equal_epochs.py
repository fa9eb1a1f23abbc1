"""Cross-modal methods against ``vse`` at equal epochs, over seeds, on two synthetic datasets.

Trains ``configs/demo_{method}.yaml`` (8 epochs each, the same schedule) once per seed on

- ``demo``: the built-in demo dataset (generator seed 0, 1,500 training images, visual noise 1.0);
- ``second``: the same generator configured differently (generator seed 11, 2,400 training
  images, 300 dev / 300 test, 16 regions, visual noise 1.3; 3,000 / 400 composed training /
  val triplets): other scenes, a larger training set and noisier regions,

then prints, per method, the mean ± standard deviation over seeds of the best dev rsum (the
value that selected the checkpoint) and of the test metrics of that checkpoint: rsum,
R@1 both ways, NDCG (exponential gain, cut at 25, ROUGE-L relevance) of every uni-modal and
mixed scenario, the test embeddings' geometry (mean image-image and caption-caption cosine,
:mod:`featvlr.evaluation.geometry`) and the training time.

The baseline is the strongest ``vse`` variant, chosen on dev: ``vse`` (the shipped config: the
hinge summed over negatives in every epoch, VSE0), ``vse_hardest`` (VSE-infinity's recipe: the
hardest negative after one summed epoch) and ``vse_infonce``; the one
with the highest mean best dev rsum is the reference of the paired differences (by seed), and
each method's row says whether it beats it on every seed (``holds``), on average only
(``mixed``) or not (``does not hold``). ``gls`` also gets its stage-1 run as a row of its own
(``gls_stage1``: it trains before stage 2, so ``gls`` has twice the epochs).

    python -m benchmarks.experiments.equal_epochs --dataset demo [--methods vse hrem covlr rvlr]
        [--seeds 0 1 2] [--runs bench_out/equal_epochs] [--reuse] [--set loss.cutoff=1.7 ...]
    python -m benchmarks.experiments.equal_epochs --dataset second --methods vse vse_hardest vse_infonce hrem gls
        [--json FILE]

One thread, CPU; each run is a ``featvlr train``. ``--reuse`` takes finished runs
(``eval/test.json`` present) as they are, so the table can be printed again without training.
``--set`` applies to every method's config (for an ablation of one method, give one method).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import CONFIGS, ROOT, epoch_records, numbers, pin_threads

DATASETS = {
    "demo": {"seed": 0, "params": {}},
    "second": {"seed": 11, "params": {"n_train": 2400, "n_dev": 300, "n_test": 300, "n_regions": 16,
                                      "visual_noise": 1.3, "n_cirr_train": 3000, "n_cirr_val": 400}},
}
COLUMNS = [("best_dev_rsum", "dev rsum"), ("rsum", "rsum"), ("i2t/R@1", "i2t R@1"), ("t2i/R@1", "t2i R@1"),
           ("i2i/ndcg_exp@25", "i2i NDCG"), ("t2t/ndcg_exp@25", "t2t NDCG"),
           ("i2it/ndcg_exp@25", "i2it NDCG"), ("t2it/ndcg_exp@25", "t2it NDCG"),
           ("geometry/img_cos", "img cos"), ("geometry/txt_cos", "txt cos"), ("seconds", "train s")]
#: Variants of ``vse``: the config and its overrides (the strongest on dev is the baseline).
VSE_VARIANTS = {"vse": [], "vse_hardest": ["loss.max_violation=true", "loss.warmup_epochs=1"],
                "vse_infonce": ["loss.kind=infonce"]}


def test_metrics(run_dir: Path) -> dict[str, float]:
    """Test metrics of best.pt, and the best dev rsum over epochs (the value that chose it)."""
    rec = json.loads((run_dir / "eval" / "test.json").read_text(encoding="utf-8"))
    out = numbers(rec.get("metrics", rec))
    dev = [r["dev/rsum"] for r in epoch_records(run_dir) if r.get("dev/rsum") is not None]
    if dev:
        out["best_dev_rsum"] = max(dev)
    return out


def run_one(method: str, seed: int, cache: Path, run_dir: Path, sets: list[str], reuse: bool) -> dict[str, float]:
    from featvlr.config import load_config
    from featvlr.training.trainer import train

    timing = run_dir / "bench_seconds.txt"
    if reuse and (run_dir / "eval" / "test.json").exists():
        out = test_metrics(run_dir)
        out["seconds"] = float(timing.read_text()) if timing.exists() else float("nan")
        return out
    if method == "gls_stage1":  # trained by the gls run (its stage 1)
        return test_metrics(run_dir)
    config, extra = ("vse", VSE_VARIANTS[method]) if method in VSE_VARIANTS else (method, [])
    cfg = load_config(CONFIGS / f"demo_{config}.yaml",
                      [f"data.cache={cache}", f"train.seed={seed}", "train.progress=false", *extra, *sets])
    t0 = time.perf_counter()
    train(cfg, run_dir, resume=(run_dir / "ckpt" / "last.pt").exists())  # an interrupted run goes on
    seconds = time.perf_counter() - t0
    timing.write_text(f"{seconds:.1f}\n")
    out = test_metrics(run_dir)
    out["seconds"] = seconds
    return out


def mean_std(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def strongest_vse(results: dict[str, dict[int, dict[str, float]]]) -> str | None:
    """The ``vse`` variant with the highest mean best dev rsum (chosen on dev, never on test)."""
    dev = {m: statistics.fmean(r["best_dev_rsum"] for r in by_seed.values())
           for m, by_seed in results.items() if m in VSE_VARIANTS and by_seed
           and all("best_dev_rsum" in r for r in by_seed.values())}
    return max(dev, key=dev.get) if dev else None


def verdict(diffs: list[float]) -> str:
    """``holds`` when the method is ahead on every seed, ``mixed`` when on average only
    (the report's rule, :func:`featvlr.report.strongest.verdict`)."""
    from featvlr.report.strongest import verdict as report_verdict

    return report_verdict(diffs) if diffs else "—"


def table(results: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> str:
    best = strongest_vse(results) or "vse"
    lines = ["| method | " + " | ".join(label for _, label in COLUMNS)
             + f" | rsum − vse (paired) | rsum − {best} (paired) | claim vs {best} |",
             "|---" * (len(COLUMNS) + 4) + "|"]

    def paired(method: str, by_seed: dict[int, dict[str, float]], base_name: str) -> list[float]:
        base = results.get(base_name, {})
        return [by_seed[s]["rsum"] - base[s]["rsum"] for s in seeds if s in by_seed and s in base]

    for method, by_seed in results.items():
        cells = [mean_std([by_seed[s][key] for s in seeds if s in by_seed and key in by_seed[s]],
                          3 if ("ndcg" in key or "cos" in key) else 1) for key, _ in COLUMNS]
        shipped = paired(method, by_seed, "vse") if method != "vse" else []
        strongest = paired(method, by_seed, best) if method != best else []
        claim = verdict(strongest) if method not in VSE_VARIANTS else ("baseline" if method == best else "—")
        lines.append(f"| {method} | " + " | ".join(cells)
                     + f" | {mean_std(shipped) if shipped else '—'} | {mean_std(strongest) if strongest else '—'}"
                     + f" | {claim} |")
    return f"baseline: {best} (highest mean best dev rsum among {', '.join(m for m in results if m in VSE_VARIANTS)})" \
        + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="demo")
    ap.add_argument("--methods", nargs="+",
                    default=["vse", "vse_hardest", "vse_infonce", "hrem", "covlr", "rvlr", "gls"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", type=Path, default=ROOT / "bench_out" / "equal_epochs")
    ap.add_argument("--features", type=Path, default=None,
                    help="folder of the dataset and its caches [default: <runs>/<dataset>/features]")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--tag", default="", help="suffix of the run folders (for ablations with --set)")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--table-only", action="store_true",
                    help="print the table of the finished runs only; train nothing")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    pin_threads()

    from featvlr.app.demo import build_demo_caches

    spec = DATASETS[args.dataset]
    features = args.features or args.runs / args.dataset / "features"
    paths = build_demo_caches(features, seed=spec["seed"], progress=False, params=spec["params"],
                              say=lambda text: print(text, flush=True))
    results: dict[str, dict[int, dict[str, float]]] = {}
    methods = [m for m in args.methods]
    if "gls" in methods and "gls_stage1" not in methods:
        methods.insert(methods.index("gls") + 1, "gls_stage1")
    for seed in args.seeds:  # seed by seed, so that a stopped benchmark has every method paired
        for method in methods:
            run_dir = args.runs / args.dataset / f"{method}{args.tag}_s{seed}"
            if method == "gls_stage1":
                run_dir = args.runs / args.dataset / f"gls{args.tag}_s{seed}" / "stage1"
            if args.table_only and not (run_dir / "eval" / "test.json").exists():
                continue
            res = run_one(method, seed, paths["cache"], run_dir, args.sets, args.reuse or args.table_only)
            results.setdefault(method, {})[seed] = res
            print(f"{args.dataset} {method}{args.tag} seed {seed}: rsum {res['rsum']:.1f} "
                  f"({res.get('seconds', float('nan')):.0f} s)", flush=True)
    print(f"\n{args.dataset}: test split, mean ± std over seeds {args.seeds}"
          + (f", overrides {args.sets}" if args.sets else ""))
    print(table(results, args.seeds))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dataset": args.dataset, "spec": spec, "sets": args.sets,
                                         "results": results}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
