"""Cross-modal methods against ``vse`` at equal epochs, over seeds, on two synthetic datasets.

Trains ``configs/demo_{method}.yaml`` (8 epochs each, the same schedule) once per seed on

- ``demo``: the built-in demo dataset (generator seed 0, 1,500 training images, visual noise 1.0);
- ``second``: the same generator configured differently (generator seed 11, 2,400 training
  images, 300 dev / 300 test, 16 regions, visual noise 1.3; 3,000 / 400 composed training /
  val triplets): other scenes, a larger training set and noisier regions,

then prints, per method, the mean ± standard deviation over seeds of the best dev rsum (the
value that selected the checkpoint) and of the test metrics of that checkpoint: rsum,
R@1 both ways, NDCG (exponential gain, cut at 25, ROUGE-L relevance) of every uni-modal and
mixed scenario, and the training time. The difference to ``vse`` is paired by seed.

    python benchmarks/equal_epochs.py --dataset demo [--methods vse hrem covlr rvlr]
        [--seeds 0 1 2] [--runs bench_out/equal_epochs] [--reuse] [--set loss.cutoff=1.7 ...]
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

import torch

ROOT = Path(__file__).resolve().parents[1]

DATASETS = {
    "demo": {"seed": 0, "params": {}},
    "second": {"seed": 11, "params": {"n_train": 2400, "n_dev": 300, "n_test": 300, "n_regions": 16,
                                      "visual_noise": 1.3, "n_cirr_train": 3000, "n_cirr_val": 400}},
}
COLUMNS = [("best_dev_rsum", "dev rsum"), ("rsum", "rsum"), ("i2t/R@1", "i2t R@1"), ("t2i/R@1", "t2i R@1"),
           ("i2i/ndcg_exp@25", "i2i NDCG"), ("t2t/ndcg_exp@25", "t2t NDCG"),
           ("i2it/ndcg_exp@25", "i2it NDCG"), ("t2it/ndcg_exp@25", "t2it NDCG"), ("seconds", "train s")]


def test_metrics(run_dir: Path) -> dict[str, float]:
    """Test metrics of best.pt, and the best dev rsum over epochs (the value that chose it)."""
    from featvlr.records import flatten_numbers

    rec = json.loads((run_dir / "eval" / "test.json").read_text(encoding="utf-8"))
    out = {k: float(v) for k, v in flatten_numbers(rec.get("metrics", rec), sep="/").items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    dev = [json.loads(line).get("dev/rsum") for line in
           (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if '"event": "epoch"' in line]
    dev = [v for v in dev if v is not None]
    if dev:
        out["best_dev_rsum"] = max(dev)
    return out


def run_one(method: str, seed: int, cache: Path, run_dir: Path, sets: list[str], reuse: bool) -> dict[str, float]:
    from featvlr.config import load_config
    from featvlr.train import train

    timing = run_dir / "bench_seconds.txt"
    if reuse and (run_dir / "eval" / "test.json").exists():
        out = test_metrics(run_dir)
        out["seconds"] = float(timing.read_text()) if timing.exists() else float("nan")
        return out
    cfg = load_config(ROOT / "configs" / f"demo_{method}.yaml",
                      [f"data.cache={cache}", f"train.seed={seed}", "train.progress=false", *sets])
    t0 = time.perf_counter()
    train(cfg, run_dir)
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


def table(results: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> str:
    lines = ["| method | " + " | ".join(label for _, label in COLUMNS) + " | rsum − vse (paired) |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    base = results.get("vse", {})
    for method, by_seed in results.items():
        cells = [mean_std([by_seed[s][key] for s in seeds if s in by_seed and key in by_seed[s]],
                          3 if "ndcg" in key else 1) for key, _ in COLUMNS]
        diffs = [by_seed[s]["rsum"] - base[s]["rsum"] for s in seeds if s in by_seed and s in base]
        paired = mean_std(diffs) if method != "vse" and diffs else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {paired} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="demo")
    ap.add_argument("--methods", nargs="+", default=["vse", "hrem", "covlr", "rvlr"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", type=Path, default=ROOT / "bench_out" / "equal_epochs")
    ap.add_argument("--features", type=Path, default=None,
                    help="folder of the dataset and its caches [default: <runs>/<dataset>/features]")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--tag", default="", help="suffix of the run folders (for ablations with --set)")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from featvlr.demo_run import build_demo_caches

    spec = DATASETS[args.dataset]
    features = args.features or args.runs / args.dataset / "features"
    paths = build_demo_caches(features, seed=spec["seed"], progress=False, params=spec["params"],
                              say=lambda text: print(text, flush=True))
    results: dict[str, dict[int, dict[str, float]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = args.runs / args.dataset / f"{method}{args.tag}_s{seed}"
            res = run_one(method, seed, paths["cache"], run_dir, args.sets, args.reuse)
            results.setdefault(method, {})[seed] = res
            print(f"{args.dataset} {method}{args.tag} seed {seed}: rsum {res['rsum']:.1f} "
                  f"({res['seconds']:.0f} s)", flush=True)
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
