"""Per-step compute of every cross-modal method at the same shapes, against the ``vse`` step.

Builds a Flickr30K-shaped cache in a temporary folder (``--images`` x 36 x 2048 float16
regions, 5 captions per image of 8-16 tokens x 384, pooled vectors; ``bench_loader``'s
writer, :func:`benchmarks.common.write_f30k_shaped`), loads the training split in memory and
pre-builds a few batches (``CaptionBatches(batch_size=128, seed=0, region_dropout=0.2,
placement="memory")``), then times forward + backward + grad clip (2.0) + AdamW on those
batches for each method, with the model and loss options of ``configs/<family>_<method>.yaml``
and ``model.embed_dim`` set to ``--embed`` (512):

- ``vse``, ``covlr``;
- ``hrem`` before its relation module switches on (``hrem``) and after (``hrem_graph``);
- ``gls`` stage 1 (TERAN token transformers + MrSw hinge, ``gls_s1``) and stage 2 (global
  transformers on the frozen stage-1 tokens, CMC + MrSw hinge, ``gls_s2``).

Prints pairs/s, median ms/step (wall clock and this process's CPU time, the steadier of the
two on a machine shared with other jobs), the ratio of each step to the ``vse`` step, and the
GFLOP of the step's matrix products (``torch.utils.flop_counter``: forward and backward), so
that a ratio of times can be read against the ratio of work the method asks for. The counter
does not see the fused inference kernel of a frozen ``nn.TransformerEncoder`` (no gradient,
eval mode): ``gls_s2``'s count leaves out its stage-1 forward (about a third of ``gls_s1``'s
count). With ``--profile METHOD`` it also prints a ``torch.profiler`` table (top ops by
self CPU time) of one step of that method.

    python -m benchmarks.speed.bench_method_steps [--images 3000] [--steps 3] [--threads 1]
        [--family demo|f30k] [--methods vse hrem hrem_graph gls_s1 gls_s2 covlr]
        [--profile gls_s1] [--keep /tmp/f30k_3000.h5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import CONFIGS, f30k_cache, pin_threads, training_step
from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.data import CaptionBatches
from featvlr.methods import StepState, create_method
from featvlr.training.trainer import feature_dims

# name -> (config method, extra overrides, StepState keyword arguments)
VARIANTS = {
    "vse": ("vse", [], {"epoch": 1}),
    "hrem": ("hrem", [], {"epoch": 1, "step": 0}),
    "hrem_graph": ("hrem", [], {"epoch": 1, "step": 10**9}),
    "gls_s1": ("gls", ["model.stage=1", "model.eval_mode=L"], {"epoch": 1}),
    "gls_s2": ("gls", ["model.stage=2"], {"epoch": 1}),
    "covlr": ("covlr", [], {"epoch": 1}),
}


def build_method(name: str, family: str, embed: int, dims, device: torch.device) -> tuple[torch.nn.Module, StepState]:
    method_name, extra, state_kw = VARIANTS[name]
    cfg = load_config(CONFIGS / f"{family}_{method_name}.yaml", [f"model.embed_dim={embed}", *extra])
    torch.manual_seed(0)
    method = create_method(cfg, dims=dims).to(device).train()
    if name == "gls_s2":  # a stage 2 on a (here untrained) stage 1, as after its stage-1 run
        method.stage1_ready.fill_(True)
    return method, StepState(steps_per_epoch=1000, **state_kw)


def make_step(method: torch.nn.Module, state: StepState, lr: float = 2e-4):
    opt = torch.optim.AdamW(method.param_groups(lr, 1e-4), lr=lr, weight_decay=1e-4)
    return training_step(method, opt, state)


def time_steps(step, batches: list[dict], steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (this process) of each timed step."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    wall, cpu = [], []
    for i in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step(batches[(warmup + i) % len(batches)])
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--family", default="f30k", choices=("demo", "f30k"),
                    help="model/loss options of configs/<family>_<method>.yaml")
    ap.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--profile", default=None, choices=list(VARIANTS),
                    help="print a torch.profiler table of one step of this method")
    ap.add_argument("--rows", type=int, default=25, help="rows of the profiler table")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one more step per method)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="cache file to write once and reuse")
    args = ap.parse_args()
    pin_threads(args.threads)
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {device}; batch {args.batch}, "
          f"embed {args.embed}, configs/{args.family}_*.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cache = f30k_cache(args.keep, Path(tmp), args.images)
        store = FeatureStore(cache)
        split = store.split("train").load_in_memory()
        dims = feature_dims(split)
        loader = CaptionBatches(split, batch_size=args.batch, seed=0, region_dropout=0.2, placement="memory")
        n_pre = max(1, min(len(loader), args.warmup + args.steps))
        batches = [{k: v.to(device) for k, v in loader[b].items()} for b in range(n_pre)]
        print(f"cache: {split.n_images} images x 36 x 2048 fp16, {split.n_texts} captions; "
              f"{n_pre} batches pre-built")

        methods = list(dict.fromkeys((["vse"] if "vse" not in args.methods else []) + args.methods))
        rows: dict[str, tuple[float, float, float]] = {}
        print(f"medians of {args.steps} steps; 'cpu' is this process's CPU time, steadier than wall time "
              "on a shared machine; GFLOP: matrix products of one step (forward + backward; a frozen "
              "transformer's fused inference kernel is not counted)")
        print(f"{'method':<12} {'pairs/s':>8} {'ms/step':>8} {'cpu ms':>8} {'x vse':>6} {'cpu x vse':>9} "
              f"{'GFLOP':>7} {'x vse':>6}   wall ms of each step")
        for name in methods:
            method, state = build_method(name, args.family, args.embed, dims, device)
            step = make_step(method, state)
            wall, cpu = time_steps(step, batches, args.steps, args.warmup)
            gflop = float("nan")
            if not args.no_flops:
                with FlopCounterMode(display=False) as counter:
                    step(batches[0])
                gflop = counter.get_total_flops() / 1e9
            ms, cpu_ms = statistics.median(wall) * 1000, statistics.median(cpu) * 1000
            rows[name] = (ms, cpu_ms, gflop)
            ref = rows["vse"]
            print(f"{name:<12} {args.batch / ms * 1000:8.1f} {ms:8.0f} {cpu_ms:8.0f} {ms / ref[0]:6.2f} "
                  f"{cpu_ms / ref[1]:9.2f} {gflop:7.1f} {gflop / ref[2]:6.2f}   "
                  + " ".join(f"{t * 1000:.0f}" for t in wall), flush=True)
            del method, step

        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            method, state = build_method(args.profile, args.family, args.embed, dims, device)
            step = make_step(method, state)
            step(batches[0])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(batches[1 % len(batches)])
            print(f"\nprofile of one {args.profile} step (top ops by self CPU time)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        store.close()


if __name__ == "__main__":
    main()
