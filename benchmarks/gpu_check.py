"""The GPU check: every CUDA and AMP path of featvlr, exercised and timed, in one table.

Run it whenever a GPU is available and keep its output with the change it checks::

    python benchmarks/gpu_check.py                       # CUDA, AMP on
    python benchmarks/gpu_check.py --device cpu --max-steps 3 --loader-images 500   # dry run

(``python -m benchmarks.gpu_check`` from the repository root is the same.)

1. every ``configs/demo_*.yaml`` for one epoch (GLS's stage 1 and RVLR's teacher included)
   with ``train.amp=true`` on the device: seconds, pairs/s, the share of the epoch spent
   waiting for data, where the training rows lived, the dev metric the config selects on,
   and whether every logged loss was finite;
2. :mod:`benchmarks.speed.bench_loader` (pairs/s of every read path against the bare step);
3. :mod:`benchmarks.speed.bench_eval` (chunked exact evaluation at COCO 5K shape).

The demo caches are built first when missing (``--cache-dir``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:  # run by path rather than with python -m: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import demo_cache_for, demo_configs, epoch_records, pin_threads, run_module  # noqa: E402


def train_configs(args, out_dir: Path) -> list[dict]:
    from featvlr.app.demo import build_demo_caches
    from featvlr.config import load_config
    from featvlr.training.trainer import train

    paths = build_demo_caches(args.cache_dir, progress=False)
    rows = []
    for path in demo_configs():
        cache = demo_cache_for(path, paths)
        sets = [f"data.cache={cache}", f"train.device={args.device}", "train.amp=true", "train.epochs=1",
                "train.progress=false", f"train.max_steps_per_epoch={args.max_steps}"]
        if "gls" in path.stem:
            sets.append("model.stage1_epochs=1")
        cfg = load_config(path, sets)
        run = out_dir / path.stem
        row = {"check": f"train {path.stem}", "ok": False}
        t = time.perf_counter()
        try:
            result = train(cfg, run)
            rec = epoch_records(run)[-1]
            start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
            finite = all(math.isfinite(v) for r in epoch_records(run) for k, v in r.items()
                         if k.startswith("train_") and isinstance(v, float))
            metric = cfg.train.select_metric  # on the dev split: every demo config has targets there
            value = result.best_metrics.get(metric, float("nan"))
            row.update(ok=finite, seconds=time.perf_counter() - t, pairs_s=rec["items_per_s"],
                       data_wait=rec["data_wait_s"] / max(rec["time_s"], 1e-9),
                       placement=start.get("data_placement", "?"), metric=f"dev {metric} {value:.2f}")
        except Exception as exc:  # noqa: BLE001 - the table reports it
            row.update(seconds=time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}"[:120])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_script(name: str, extra: list[str]) -> dict:
    """Run the benchmark module ``benchmarks.<name>`` in a child process; its last line is the row's result."""
    t = time.perf_counter()
    proc = run_module(f"benchmarks.{name}", extra)
    out = proc.stdout.strip().splitlines()
    print(f"--- {name} {' '.join(extra)}\n{proc.stdout}{proc.stderr[-2000:]}", flush=True)
    return {"check": name, "ok": proc.returncode == 0, "seconds": time.perf_counter() - t,
            "metric": out[-1][:60] if out else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cache-dir", default="features")
    ap.add_argument("--max-steps", type=int, default=0, help="cap on steps per epoch (0: the whole epoch)")
    ap.add_argument("--loader-images", type=int, default=10000)
    ap.add_argument("--skip-benchmarks", action="store_true")
    args = ap.parse_args()
    pin_threads()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a dry run")
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"featvlr GPU check on {name}, torch {torch.__version__}, "
          f"bf16 {'yes' if args.device.startswith('cuda') and torch.cuda.is_bf16_supported() else 'no'}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = train_configs(args, Path(tmp))
    if not args.skip_benchmarks:
        rows.append(run_script("speed.bench_loader", ["--images", str(args.loader_images), "--batches", "40"]))
        rows.append(run_script("speed.bench_eval", ["--skip-loop", "--skip-faiss"]))
    print(f"\n{'check':<22} {'ok':<4} {'s':>7} {'pairs/s':>9} {'wait':>6} {'rows on':<8} result")
    for r in rows:
        wait = f"{100 * r['data_wait']:.1f}%" if "data_wait" in r else ""
        pairs = f"{r['pairs_s']:.0f}" if "pairs_s" in r else ""
        print(f"{r['check']:<22} {'yes' if r['ok'] else 'NO':<4} {r.get('seconds', 0):7.1f} {pairs:>9} {wait:>6} "
              f"{r.get('placement', ''):<8} {r.get('metric', r.get('error', ''))}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
