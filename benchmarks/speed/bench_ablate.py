"""A 12-run ablation on the demo data (2 margins x 2 methods x 3 seeds) with `featvlr ablate`,
against the same 12 runs as separate `featvlr train` processes.

The saving is process start-up (imports, text of the config) and the feature cache, which
`ablate` opens and reads into memory once per process. Runs are kept short
(`--epochs`, `--steps`) so the comparison measures the overhead, not the training.

    python -m benchmarks.speed.bench_ablate [--epochs 1] [--steps 10] [--cache features/demo.h5]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import pin_threads
from featvlr.app.demo import build_demo_caches, find_config
from featvlr.config import save_config
from featvlr.tuning.ablate import parse_grid, plan_runs, run_ablation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path("features/demo.h5"))
    args = ap.parse_args()
    pin_threads()  # this process and the 12 `featvlr train` processes it starts
    if not args.cache.exists():
        build_demo_caches(args.cache.parent)
    grid = ["loss.margin=0.1,0.2", "method=vse,hrem"]
    seeds = [0, 1, 2]
    extra = [f"data.cache={args.cache}", f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps}",
             "train.progress=false"]
    config = find_config("demo_vse.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run_ablation(config, grid, seeds, Path(tmp) / "ablate", jobs=1, extra=extra)
        ablate_s = time.perf_counter() - t

        runs = plan_runs(config, parse_grid(grid), seeds, Path(tmp) / "separate", extra + ["train.progress=false"])
        t = time.perf_counter()
        for i, run in enumerate(runs):
            resolved = Path(tmp) / f"cell{i}.yaml"  # the cell's resolved config, as a user would write it
            save_config(run.config, resolved)
            cmd = [sys.executable, "-m", "featvlr.cli", "train", "--config", str(resolved), "--out", str(run.run_dir)]
            subprocess.run(cmd, check=True, capture_output=True)
        separate_s = time.perf_counter() - t
    print(f"12 runs ({args.epochs} epoch(s), at most {args.steps} steps each) on {args.cache}")
    print(f"featvlr ablate (one process, report included): {ablate_s:7.1f} s")
    print(f"12 separate featvlr train processes:           {separate_s:7.1f} s")
    print(f"saving: {separate_s - ablate_s:.1f} s ({separate_s / ablate_s:.2f}x)")


if __name__ == "__main__":
    main()
