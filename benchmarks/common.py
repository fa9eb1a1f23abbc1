"""What the benchmark scripts share: threads, the device, generated Flickr30K-shaped data, one
training step, memory readings, demo runs and the CIRR scoring of the composed experiments.

Scripts run from the repository root as modules of the ``benchmarks`` package (benchmarks/README.md)::

    python -m benchmarks.speed.bench_train --help

so ``from benchmarks import common`` finds this file and ``featvlr`` is the installed package.
Nothing here imports torch at module level: a script that measures its own memory (the
child process of ``bench_extract``) pays for torch only when it uses it.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MiB = 1 << 20

# --- threads and the device -------------------------------------------------------------------

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pin_threads(n: int = 1) -> int:
    """Run this process, and the processes it starts, on ``n`` CPU threads: the environment
    (read by child processes and by torch when it is imported later), torch's pool when torch is
    loaded already, and the BLAS / OpenMP pools numpy has loaded (through threadpoolctl, when
    installed). Returns ``n``."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(n)
    return n


def pick_device(name: str = "auto"):
    """``auto``: CUDA when present, else CPU (the package's rule, :func:`featvlr.core.device.pick_device`)."""
    from featvlr.core.device import pick_device as package_rule

    return package_rule(name)


def describe_device(device) -> str:
    """The GPU's name, or ``cpu (N threads)``."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock reads finished work."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def run_module(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m module args`` in a child process that can import ``benchmarks``, output captured."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, check=False)


# --- memory and CPU time ----------------------------------------------------------------------

def proc_status(*keys: str) -> dict[str, int]:
    """Fields of ``/proc/self/status`` (Linux) in bytes; 0 for a field that is not there."""
    out = dict.fromkeys(keys, 0)
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1]) * 1024
    return out


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (``children``: of its largest finished child), MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- generated data ---------------------------------------------------------------------------

def write_f30k_shaped(path: Path, n_images: int, *, seed: int = 0, token_lengths: tuple[int, int] = (8, 17),
                      pooled_dtype=np.float16) -> Path:
    """A generated training split of Flickr30K's shapes: ``n_images`` x 36 x 2048 float16
    regions, 5 captions per image of ``token_lengths[0]`` to ``token_lengths[1] - 1`` tokens x
    384 float16, pooled caption vectors. Written in pieces (never whole in memory); the pieces
    do not change the values, which depend on ``seed`` only."""
    from featvlr.cache.store import CacheWriter

    rng = np.random.default_rng(seed)
    n_caps = 5 * n_images
    lengths = rng.integers(*token_lengths, size=n_caps)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with CacheWriter(path, text_encoder="synthetic", text_dim=384) as w:
        reg = w.create("images/train/regions", (n_images, 36, 2048), np.float16)
        for s in range(0, n_images, 512):
            e = min(n_images, s + 512)
            reg[s:e] = rng.standard_normal((e - s, 36, 2048), dtype=np.float32).astype(np.float16)
        tok = w.create("texts/train/tokens", (int(offsets[-1]), 384), np.float16)
        for s in range(0, int(offsets[-1]), 1 << 18):
            e = min(int(offsets[-1]), s + (1 << 18))
            tok[s:e] = rng.standard_normal((e - s, 384), dtype=np.float32).astype(np.float16)
        w.write("texts/train/offsets", offsets)
        w.write("texts/train/pooled", rng.standard_normal((n_caps, 384), dtype=np.float32).astype(pooled_dtype))
        w.write("texts/train/image_index", np.repeat(np.arange(n_images), 5).astype(np.int64))
    return path


def f30k_cache(keep: Path | None, folder: Path, n_images: int) -> Path:
    """``keep`` (or ``folder/f30k_shaped.h5``), written by :func:`write_f30k_shaped` when missing."""
    import time

    cache = keep or Path(folder) / "f30k_shaped.h5"
    if not cache.exists():
        t = time.perf_counter()
        write_f30k_shaped(cache, n_images)
        print(f"wrote {cache} ({cache.stat().st_size / MiB:.0f} MiB) in {time.perf_counter() - t:.0f} s")
    return cache


def f30k_batch(b: int, device, *, seed: int = 0, token_lengths: tuple[int, int] = (10, 18), regions: int = 36,
               region_dim: int = 2048, text_dim: int = 384) -> dict:
    """A training batch of ``b`` pairs built in memory: regions ``[b, regions, region_dim]``,
    tokens of ``token_lengths[0]`` to ``token_lengths[1] - 1`` x ``text_dim`` (padding zeroed),
    pooled text, image ids; on ``device``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(*token_lengths, (b,), generator=g)
    tmask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    rmask = torch.ones(b, regions, dtype=torch.bool)
    batch = {
        "regions": torch.randn(b, regions, region_dim, generator=g),
        "region_mask": rmask,
        "region_lengths": rmask.sum(1),
        "tokens": torch.randn(b, tmask.shape[1], text_dim, generator=g) * tmask[..., None],
        "token_mask": tmask,
        "token_lengths": lengths,
        "pooled_text": torch.randn(b, text_dim, generator=g),
        "image_ids": torch.randint(0, 10 * b, (b,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


# --- one training step ------------------------------------------------------------------------

def training_step(method, optimizer, state=None, *, amp: bool = False, clip: float | None = 2.0
                  ) -> Callable[..., None]:
    """A function running one step on a batch, as the trainer takes it: forward (bf16 autocast
    when ``amp``), the sum of the ``*_loss`` outputs, backward, gradient clipping at ``clip``
    (none when None) and the update. ``step(batch)`` uses ``state``; ``step(batch, other)``
    another :class:`featvlr.methods.StepState`."""
    import torch

    device_type = next(method.parameters()).device.type

    def step(batch: dict, step_state=None) -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            out = method(batch, state if step_state is None else step_state)
        total = sum(v for k, v in out.items() if k.endswith("_loss"))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(method.parameters(), clip)
        optimizer.step()

    return step


# --- demo runs --------------------------------------------------------------------------------

def demo_configs(pattern: str = "demo_*.yaml") -> list[Path]:
    """The shipped demo configs matching ``pattern`` under ``configs/``, sorted."""
    return sorted(CONFIGS.glob(pattern))


def demo_cache_for(config: Path, paths: dict[str, Path]) -> Path:
    """The demo cache a config trains on: the composed one when it names it, else the cross-modal
    one (``paths`` from :func:`featvlr.app.demo.build_demo_caches`)."""
    return paths["composed_cache"] if "demo_composed.h5" in config.read_text() else paths["cache"]


def numbers(record: dict) -> dict[str, float]:
    """The numbers of a nested results record, one level, keys joined by ``/`` (``i2t/R@1``)."""
    from featvlr.core.flatten import flatten_numbers

    return {k: float(v) for k, v in flatten_numbers(record, sep="/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def epoch_records(run_dir: Path) -> list[dict]:
    """The ``epoch`` records of a run's ``log.jsonl``, in order."""
    lines = (Path(run_dir) / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [rec for rec in map(json.loads, lines) if rec.get("event") == "epoch"]


# --- composed retrieval: CIRR scoring and tables ----------------------------------------------

CIRR_KEYS = ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3")


def truth_file(cache: Path, data: str | Path | None = None) -> Path:
    """The demo's CIRR test1 ground truth: ``<data>/truth/cirr_test1_edits.json``, the data folder
    defaulting to ``<cache folder>/demo_data`` (where the demo builds it)."""
    return Path(data or Path(cache).parent / "demo_data") / "truth" / "cirr_test1_edits.json"


def read_truth(path: Path) -> dict[str, str]:
    """``{pairid: target name}`` of a ``[{pairid, target}, ...]`` file."""
    return {str(t["pairid"]): t["target"] for t in json.loads(Path(path).read_text(encoding="utf-8"))}


def score_lists(recall: dict, subset: dict, truth: dict[str, str]) -> dict[str, float]:
    """CIRR server metrics of the two submission dicts against ``{pairid: target name}``: the
    target's position in the top-50 list (reference removed) and in the top-3 subset list."""
    out: dict[str, float] = {}
    for k in (1, 5, 10, 50):
        out[f"R@{k}"] = 100.0 * statistics.fmean(truth[p] in recall[p][:k] for p in truth)
    for k in (1, 2, 3):
        out[f"Rsubset@{k}"] = 100.0 * statistics.fmean(truth[p] in subset[p][:k] for p in truth)
    return out


def mean_std(rows: list[dict[str, float]], key: str) -> str:
    """``mean ± std`` of ``key`` over ``rows`` (std 0 for one row)."""
    vals = [r[key] for r in rows]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):6.1f} ± {sd:3.1f}"


def print_cirr_table(table: dict[str, dict[str, list[dict[str, float]]]], label: str) -> None:
    """One line per row name and split: ``mean ± std`` of every CIRR recall over the split's rows."""
    print(f"{label:<18} {'split':<6} " + " ".join(f"{k:>12}" for k in CIRR_KEYS))
    for name, res in table.items():
        for split, rows in res.items():
            if rows:
                print(f"{name:<18} {split:<6} " + " ".join(f"{mean_std(rows, k):>12}" for k in CIRR_KEYS))
