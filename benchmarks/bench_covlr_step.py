"""Cost of one CoVLR training step (Yang et al., ICME 2024) against one ``vse`` step.

A Flickr30K-shaped batch (BUTD regions ``[B, 36, 2048]``, 384-d token features of 10-17
tokens, 1024-d embeddings, GPO pooling) is built in memory; for ``vse`` and for ``covlr``
(second order, first order, virtual step on the heads only, and the "split" meta-test
batch) it times forward + backward + AdamW step, under AMP (bf16 autocast) on CUDA, and
prints ms/step, the ratio to ``vse`` and the peak memory. On CPU it also prints the
process CPU time per step, which other processes on a shared machine barely disturb (wall
times there do not compare between runs).

    python benchmarks/bench_covlr_step.py [--batch 128] [--steps 20] [--device auto] [--no-amp]
                                          [--threads N]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench_common import training_step  # the script's folder is on sys.path
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


def make_batch(b: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 18, (b,), generator=g)
    tmask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    rmask = torch.ones(b, 36, dtype=torch.bool)
    batch = {
        "regions": torch.randn(b, 36, 2048, generator=g),
        "region_mask": rmask,
        "region_lengths": rmask.sum(1),
        "tokens": torch.randn(b, tmask.shape[1], 384, generator=g) * tmask[..., None],
        "token_mask": tmask,
        "token_lengths": lengths,
        "pooled_text": torch.randn(b, 384, generator=g),
        "image_ids": torch.randint(0, 10 * b, (b,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


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
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
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
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    amp = not args.no_amp and device.type == "cuda"
    print(f"torch {torch.__version__}, {name}, batch {args.batch}, {args.steps} timed steps, "
          f"AMP {'bf16' if amp else 'off'}")
    batch = make_batch(args.batch, device)
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
