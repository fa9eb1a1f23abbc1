"""Cost of one CoVLR training step (Yang et al., ICME 2024) against one ``vse`` step.

A Flickr30K-shaped batch (BUTD regions ``[B, 36, 2048]``, 384-d token features of 10-17
tokens, 1024-d embeddings, GPO pooling) is built in memory; for ``vse`` and for ``covlr``
(second order, first order, virtual step on the heads only, and the "split" meta-test
batch) it times forward + backward + AdamW step, under AMP (bf16 autocast) on CUDA, and
prints ms/step, the ratio to ``vse`` and the peak memory. On CPU it also prints the
process CPU time per step, which other processes on a shared machine barely disturb (wall
times there do not compare between runs).

    python -m benchmarks.speed.bench_covlr_step [--batch 128] [--steps 20] [--device auto] [--no-amp]
                                                [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import describe_device, f30k_batch, pick_device, pin_threads, sync, training_step
from featvlr.methods import StepState, get_method
from featvlr.methods.base import FeatureDims

VARIANTS: dict[str, tuple[str, dict]] = {
    "vse": ("vse", {}),
    "covlr (2nd order, all)": ("covlr", {}),
    "covlr (1st order, all)": ("covlr", {"first_order": True}),
    "covlr (2nd order, heads)": ("covlr", {"virtual_params": ["heads"]}),
    "covlr (2nd order, split)": ("covlr", {"meta_test_batch": "split"}),
    "covlr (2nd order, text only)": ("covlr", {"modalities": ["text"]}),
}


def time_variant(method_name: str, loss: dict, batch: dict, device: torch.device, steps: int, amp: bool
                 ) -> tuple[float, float, float]:
    torch.manual_seed(0)
    cls = get_method(method_name)
    dims = FeatureDims(region_dim=2048, n_regions=36, text_dim=384)
    method = cls(cls.ModelOptions(embed_dim=1024), cls.LossOptions(**loss), dims).to(device).train()
    opt = torch.optim.AdamW(method.param_groups(5e-4, 1e-4))
    state = StepState(epoch=1)
    use_amp = amp and device.type == "cuda"

    one_step = training_step(method, opt, state, amp=use_amp)

    def step() -> None:
        one_step(batch)

    for _ in range(3):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    ms = (time.perf_counter() - t) / steps * 1000
    cpu_ms = (time.process_time() - c) / steps * 1000
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return ms, cpu_ms, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = ap.parse_args()
    pin_threads(args.threads)
    device = pick_device(args.device)
    name = describe_device(device)
    amp = not args.no_amp and device.type == "cuda"
    print(f"torch {torch.__version__}, {name}, batch {args.batch}, {args.steps} timed steps, "
          f"AMP {'bf16' if amp else 'off'}")
    batch = f30k_batch(args.batch, device)
    base = base_cpu = None
    on_cpu = device.type == "cpu"
    extra = f" {'cpu ms':>9s} {'x vse':>7s}" if on_cpu else f" {'peak MiB':>9s}"
    print(f"{'variant':30s} {'ms/step':>9s} {'x vse':>7s}" + extra)
    for label, (method_name, loss) in VARIANTS.items():
        ms, cpu_ms, peak = time_variant(method_name, loss, batch, device, args.steps, amp)
        base = ms if base is None else base
        base_cpu = cpu_ms if base_cpu is None else base_cpu
        tail = f" {cpu_ms:9.1f} {cpu_ms / base_cpu:7.2f}" if on_cpu else f" {peak:9.0f}"
        print(f"{label:30s} {ms:9.1f} {ms / base:7.2f}" + tail)


if __name__ == "__main__":
    main()
