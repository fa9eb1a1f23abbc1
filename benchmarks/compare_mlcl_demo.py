"""``mlcl`` against the ``combiner`` baseline on the demo composed split, over several seeds.

Trains ``configs/demo_combiner.yaml`` and ``configs/demo_mlcl.yaml`` once per seed (or reuses
finished runs), then prints, per method, the mean and standard deviation over seeds of:

- ``val``: the CIRR metrics of best.pt on the val split (the split that chose it, so
  optimistic), R@1/5/10/50 and Rsubset@1/2/3;
- ``test1``: the same metrics of the CIRR test-server files that the final evaluation wrote
  (``eval/submission``), scored here against the demo's ground truth
  (``<data>/truth/cirr_test1_edits.json``) the way the CIRR server scores them: the target's
  position in the top-50 list (reference removed) and in the top-3 subset list.

    python benchmarks/compare_mlcl_demo.py [--cache features/demo_composed.h5]
        [--runs runs/compare_mlcl] [--seeds 0 1 2] [--reuse] [--set train.epochs=60 ...]

The demo data folder defaults to ``<cache folder>/demo_data`` (where the trainer builds it).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from featvlr.config import load_config

KEYS = ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3")
METHODS = ("combiner", "mlcl")


def score_submission(recall_file: Path, subset_file: Path, truth_file: Path) -> dict[str, float]:
    """CIRR server metrics of two submission files against ``[{pairid, target}, ...]``."""
    recall = json.loads(recall_file.read_text(encoding="utf-8"))
    subset = json.loads(subset_file.read_text(encoding="utf-8"))
    truth = {str(t["pairid"]): t["target"] for t in json.loads(truth_file.read_text(encoding="utf-8"))}
    out: dict[str, float] = {}
    for k in (1, 5, 10, 50):
        out[f"R@{k}"] = 100.0 * statistics.fmean(truth[p] in recall[p][:k] for p in truth)
    for k in (1, 2, 3):
        out[f"Rsubset@{k}"] = 100.0 * statistics.fmean(truth[p] in subset[p][:k] for p in truth)
    return out


def run(method: str, seed: int, cache: Path, runs: Path, overrides: list[str], reuse: bool) -> Path:
    from featvlr.train import train

    run_dir = runs / f"{method}_s{seed}"
    if reuse and (run_dir / "eval" / "test1.json").exists():
        return run_dir
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"demo_{method}.yaml",
                      [f"data.cache={cache}", f"train.seed={seed}", "train.progress=false", *overrides])
    train(cfg, run_dir)
    return run_dir


def best_val(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r.get("event") == "epoch" and "val/composed/arithmetic_mean" in r]
    best = max(epochs, key=lambda r: r["val/composed/arithmetic_mean"])  # first of equals, as the trainer
    return {k: best[f"val/composed/{k}"] for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="features/demo_composed.h5")
    ap.add_argument("--data", default=None, help="demo data folder (default: <cache folder>/demo_data)")
    ap.add_argument("--runs", default="runs/compare_mlcl")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reuse", action="store_true", help="skip runs whose eval/test1.json exists")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    args = ap.parse_args()
    cache, runs = Path(args.cache), Path(args.runs)
    truth = Path(args.data or cache.parent / "demo_data") / "truth" / "cirr_test1_edits.json"
    table: dict[str, dict[str, list[dict[str, float]]]] = {}
    for method in METHODS:
        for seed in args.seeds:
            run_dir = run(method, seed, cache, runs, args.overrides, args.reuse)
            sub = run_dir / "eval" / "submission"
            res = table.setdefault(method, {"val": [], "test1": []})
            res["val"].append(best_val(run_dir))
            res["test1"].append(score_submission(sub / "recall_submission_test1.json",
                                                 sub / "recall_subset_submission_test1.json", truth))
    print(f"seeds {args.seeds}; mean ± std over seeds")
    print(f"{'method':<9} {'split':<6} " + " ".join(f"{k:>12}" for k in KEYS))
    for method, res in table.items():
        for split, rows in res.items():
            cells = []
            for k in KEYS:
                vals = [r[k] for r in rows]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.fmean(vals):6.1f} ± {sd:3.1f}")
            print(f"{method:<9} {split:<6} " + " ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
