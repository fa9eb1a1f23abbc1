"""Per-step cost of HREM's instance-level relation module (Fu et al., CVPR 2023) against the batch size.

The relation module scores every (caption, image) pair of the batch at the fragment level
(``[B, B, W, R]`` word-region similarities) and runs a transformer over the ``2B`` batch
embeddings, so its cost grows quadratically with ``B``. For each batch size this script
times, on a Flickr30K-shaped batch built in memory (BUTD regions ``[B, 36, 2048]``, 384-d
token features of 12-20 tokens, 1024-d embeddings):

- ``relation``: forward + backward of the relation module alone (fragment similarity,
  relevance MLPs, masks, transformer, the three graph triplet terms and the KL), on given
  embeddings and fragment tokens;
- ``hrem (graph on)``, ``hrem (warm-up)`` and ``vse``: a whole training step (forward,
  backward, clip, AdamW) of the method;

prints the median ms/step, the ratio of the HREM step to the ``vse`` step and a quadratic fit of the
relation cost, and saves a PNG plot of the curves. AMP (bf16 autocast) on CUDA.

    python -m benchmarks.speed.bench_hrem_relation [--batches 32 64 128 256] [--steps 5] [--device auto]
        [--plot bench_out/hrem_relation.png] [--relation-only]
        [--embed 1024 --regions 36 --region-dim 2048 --text-dim 384]   # smaller shapes for a CPU
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import describe_device, f30k_batch, pick_device, pin_threads, sync, training_step
from featvlr.methods import StepState, get_method
from featvlr.methods.base import FeatureDims
from featvlr.methods.hrem import HREMLossOptions, HREMModelOptions

TOKEN_LENGTHS = (12, 21)  # 12-20 tokens a caption


def timed(fn, device: torch.device, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def build(method: str, dims: FeatureDims, embed: int, device: torch.device, **loss) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = get_method(method)
    return cls(cls.ModelOptions(embed_dim=embed), cls.LossOptions(**loss), dims).to(device).train()


def step_ms(method: torch.nn.Module, batch: dict, state: StepState, device: torch.device, steps: int,
            amp: bool) -> float:
    opt = torch.optim.AdamW(method.param_groups(5e-4, 1e-4))
    one_step = training_step(method, opt, state, amp=amp)
    return timed(lambda: one_step(batch), device, steps)


def relation_ms(b: int, dims: FeatureDims, embed: int, device: torch.device, steps: int, amp: bool) -> float:
    """Forward + backward of the relation part of the loss on given embeddings and tokens."""
    torch.manual_seed(0)
    from featvlr.methods.hrem import HREMCriterion

    crit = HREMCriterion(HREMModelOptions(embed_dim=embed), HREMLossOptions(graph_warmup_steps=0)).to(device)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(*TOKEN_LENGTHS, (b,), generator=g)
    wmask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).to(device)
    words = torch.randn(b, wmask.shape[1], embed, generator=g).to(device)
    regions = torch.randn(b, dims.n_regions, embed, generator=g).to(device)
    rmask = torch.ones(b, dims.n_regions, dtype=torch.bool, device=device)
    v0 = torch.randn(b, embed, generator=g).to(device).requires_grad_()
    t0 = torch.randn(b, embed, generator=g).to(device).requires_grad_()
    ids = torch.arange(b, device=device)
    state = StepState(step=0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            v, t = F.normalize(v0, dim=-1), F.normalize(t0, dim=-1)
            v_hat, t_hat, graph = crit.relation(v, t, regions, rmask, words, wmask)
            total = sum(crit.pair_loss(crit.graph_criterion, a, c, ids, state, s)
                        for s, (a, c) in enumerate(((v_hat, t_hat), (v, t_hat), (v_hat, t))))
            total = total + 10.0 * crit.kl(graph.r_i2t, graph.r_t2i, v, t)
        crit.zero_grad(set_to_none=True)
        total.backward()

    return timed(step, device, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 96, 128, 192, 256])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--plot", default="bench_out/hrem_relation.png")
    ap.add_argument("--relation-only", action="store_true", help="time the relation module only")
    ap.add_argument("--embed", type=int, default=1024)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--region-dim", type=int, default=2048)
    ap.add_argument("--text-dim", type=int, default=384)
    args = ap.parse_args()
    pin_threads()
    dims = FeatureDims(region_dim=args.region_dim, n_regions=args.regions, text_dim=args.text_dim)
    embed = args.embed
    device = pick_device(args.device)
    name = describe_device(device)
    amp = not args.no_amp and device.type == "cuda"
    print(f"torch {torch.__version__}, {name}, {args.steps} timed steps, AMP {'bf16' if amp else 'off'}; "
          f"regions [{dims.n_regions}, {dims.region_dim}], tokens 12-20 x {dims.text_dim}, embed {embed}")
    print(f"{'B':>5s} {'relation':>10s} {'hrem on':>10s} {'hrem warm':>10s} {'vse':>10s} {'on/vse':>7s} "
          f"{'warm/vse':>8s}   (ms/step)")
    rows = []
    for b in args.batches:
        batch = f30k_batch(b, device, token_lengths=TOKEN_LENGTHS, regions=dims.n_regions,
                           region_dim=dims.region_dim, text_dim=dims.text_dim)
        rel = relation_ms(b, dims, embed, device, args.steps, amp)
        on = warm = vse = float("nan")
        if not args.relation_only:
            hrem = build("hrem", dims, embed, device)
            on = step_ms(hrem, batch, StepState(step=10**9, epoch=1), device, args.steps, amp)
            warm = step_ms(hrem, batch, StepState(step=0, epoch=1), device, args.steps, amp)
            vse = step_ms(build("vse", dims, embed, device), batch, StepState(epoch=1), device, args.steps, amp)
        rows.append((b, rel, on, warm, vse))
        print(f"{b:5d} {rel:10.1f} {on:10.1f} {warm:10.1f} {vse:10.1f} {on / vse:7.2f} {warm / vse:8.2f}", flush=True)
    bs = np.array([r[0] for r in rows], dtype=float)
    rel = np.array([r[1] for r in rows])
    if len(bs) >= 3:
        c2, c1, c0 = np.polyfit(bs, rel, 2)
        print(f"relation fit: {c0:.2f} + {c1:.4f} B + {c2:.6f} B^2 ms")
    slope = np.polyfit(np.log(bs), np.log(rel), 1)[0] if len(bs) >= 2 else float("nan")
    print(f"log-log slope of the relation cost: {slope:.2f} (2 = quadratic)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(("relation module", "hrem step (graph on)", "hrem step (warm-up)", "vse step"), 1):
        if args.relation_only and i > 1:
            break
        ax.plot(bs, [r[i] for r in rows], marker="o", label=label)
    if len(bs) >= 3:
        grid = np.linspace(bs.min(), bs.max(), 100)
        ax.plot(grid, c0 + c1 * grid + c2 * grid ** 2, "k:", lw=1, label="quadratic fit (relation)")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("ms / step")
    ax.set_title(f"HREM relation module cost ({name}; embed {embed}, {dims.n_regions} regions)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(args.plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
