"""Demo results of every method, to show that a change keeps them identical.

Trains each ``configs/demo_*.yaml`` at seed 0 (one thread, CPU) and prints its test metrics;
``--save FILE`` writes them as JSON and ``--compare FILE`` prints the saved values beside the
new ones with the largest absolute difference per method::

    python benchmarks/demo_results.py --save before.json            # on the old code
    python benchmarks/demo_results.py --compare before.json         # on the new code

Values are compared to the 10 decimals results JSON keeps. ``--epochs N`` shortens every run
(``train.epochs=N``) for a quicker check; GLS's stage 1 and RVLR's teacher follow their configs.
(``python -m benchmarks.demo_results`` from the repository root is the same.)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run by path rather than with python -m: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import demo_cache_for, demo_configs, epoch_records, numbers, pin_threads  # noqa: E402


def run_all(configs: list[Path], cache_dir: Path, out_dir: Path, epochs: int | None) -> dict[str, dict]:
    from featvlr.app.demo import build_demo_caches
    from featvlr.config import load_config
    from featvlr.training.trainer import train

    paths = build_demo_caches(cache_dir, progress=False)
    results: dict[str, dict] = {}
    for path in configs:
        cache = demo_cache_for(path, paths)
        sets = [f"data.cache={cache}", "train.progress=false", "train.seed=0"]
        if epochs is not None:
            sets.append(f"train.epochs={epochs}")
        cfg = load_config(path, sets)
        t0 = time.perf_counter()
        res = train(cfg, out_dir / path.stem)
        seconds = time.perf_counter() - t0
        test = numbers(res.test_metrics.get("metrics", res.test_metrics))
        # the mean training loss of every epoch: a sharper witness than the test metrics
        for rec in epoch_records(out_dir / path.stem):
            test[f"train_loss/epoch{rec['epoch']}"] = float(rec["train_loss"])
        results[path.stem] = {"seconds": round(seconds, 1), "best_epoch": res.best_epoch, "test": test}
        print(f"{path.stem}: {seconds:.0f} s, {len(results[path.stem]['test'])} metrics", flush=True)
    return results


def compare(old: dict[str, dict], new: dict[str, dict]) -> int:
    worst_all = 0.0
    print(f"{'config':<16} {'metric':<24} {'before':>12} {'after':>12}")
    for name in sorted(set(new)):  # the configs run now (``--configs`` may pick a few)
        a, b = old.get(name, {}).get("test", {}), new.get(name, {}).get("test", {})
        keys = sorted(set(a) | set(b))
        worst = 0.0
        for key in keys:
            if key in ("seconds",) or key.endswith("seconds"):
                continue
            va, vb = a.get(key), b.get(key)
            if va is None or vb is None:
                print(f"{name:<16} {key:<24} {str(va):>12} {str(vb):>12}  (missing)")
                worst = float("inf")
                continue
            worst = max(worst, abs(round(va, 10) - round(vb, 10)))  # to the digits results JSON keeps
        for key in ("rsum", "composed/Rsubset@1", "composed/recall_avg", "i2t/R@1", "t2i/R@1"):
            if key in a or key in b:
                print(f"{name:<16} {key:<24} {a.get(key, float('nan')):>12.4f} {b.get(key, float('nan')):>12.4f}")
        print(f"{name:<16} {'max |difference|':<24} {worst:>25.3g}  over {len(keys)} metrics")
        worst_all = max(worst_all, worst)
    if set(old) - set(new):
        print(f"not run now: {', '.join(sorted(set(old) - set(new)))}")
    print(f"largest difference over every method and metric run: {worst_all:.3g}")
    return 0 if worst_all == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="demo_*.yaml", help="glob under configs/")
    ap.add_argument("--cache-dir", default="features", help="where the demo caches are (built if missing)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--compare", type=Path)
    args = ap.parse_args()
    pin_threads()
    configs = demo_configs(args.configs)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(configs, Path(args.cache_dir), Path(tmp), args.epochs)
    if args.save:
        args.save.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"saved {args.save}")
    if args.compare:
        return compare(json.loads(args.compare.read_text()), results)
    for name, r in results.items():
        print(name, r["seconds"], "s", {k: round(v, 4) for k, v in r["test"].items() if k in ("rsum",)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
