"""What the trainer says and keeps when a run stops early: bad inputs, interruptions, failures.

- :func:`nonfinite_inputs` names the cache rows behind a NaN/inf loss when the batch's own
  inputs are not finite (a damaged cache, not a diverging loss);
- :func:`saved_state` and :func:`resume_command` give the line an interrupted run prints:
  which epoch is safely saved and the exact command that continues it;
- :func:`remove_fresh_run` takes back what a new run wrote before its first checkpoint, so
  a run that stops before saving anything leaves no half-made run folder;
- :func:`check_resumable` and :func:`check_state_dict` refuse a ``--resume`` checkpoint of
  another method or with weights that do not fit, naming the first differences.
"""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from featvlr.core.errors import InputError

# Batch key -> the cache dataset it is read from, and the id keys that name its rows.
SOURCES = {
    "regions": ("images/{split}/regions", ("image_ids",)),
    "global_image": ("images/{split}/global", ("image_ids",)),
    "tokens": ("texts/{split}/tokens", ("text_ids",)),
    "pooled_text": ("texts/{split}/pooled", ("text_ids", "query_ids")),
    "reference_image": ("images/{split}/global", ("reference_ids",)),
    "target_image": ("images/{split}/global", ("target_ids",)),
}
ID_NAMES = {"image_ids": "image", "text_ids": "caption", "query_ids": "query", "reference_ids": "image",
            "target_ids": "image"}


def _rows(values: list[int], limit: int = 5) -> str:
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more


def nonfinite_inputs(batch: dict[str, Any], split: str) -> str | None:
    """``"texts/train/tokens at caption 61, 62"``-style description of the batch inputs that
    hold NaN or inf (None when every input is finite)."""
    parts = []
    for key, x in batch.items():
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() == 0:
            continue
        bad = ~torch.isfinite(x.detach())
        rows = (bad.flatten(1).any(1) if x.dim() > 1 else bad).nonzero().flatten().tolist()
        if not rows:
            continue
        dataset, id_keys = SOURCES.get(key, (f"batch input {key!r}", tuple(ID_NAMES)))
        named = []
        for id_key in id_keys:
            ids = batch.get(id_key)
            if torch.is_tensor(ids) and ids.dim() == 1 and ids.shape[0] == x.shape[0]:
                picked = sorted({int(v) for v in ids[rows].tolist()})
                named.append(f"{ID_NAMES[id_key]} {_rows(picked)}")
        where = " and ".join(named) if named else f"batch rows {_rows(rows)}"
        parts.append(f"{dataset.format(split=split)} at {where}")
    return "; ".join(parts) or None


def saved_state(run_dir: Path) -> tuple[int, str]:
    """``(epoch, sentence)``: the epoch that ``ckpt/last.pt`` holds (0 when there is none)."""
    from featvlr.core.checkpoint import load_checkpoint

    last = run_dir / "ckpt" / "last.pt"
    if not last.exists():
        return 0, "no epoch was finished, so nothing was saved"
    ckpt = load_checkpoint(last)
    return int(ckpt["epoch"]), f"epoch {int(ckpt['epoch'])} (step {int(ckpt['step'])}) is safely saved in {last}"


def resume_command(run_dir: Path, world: int) -> str:
    """The command that continues the run in ``run_dir``: this process's own command line
    with ``--resume`` (and ``--out``) when it is ``featvlr train``, else one from the run's
    resolved ``config.yaml``."""
    args = sys.argv[1:]
    prefix = "featvlr" if world == 1 else f"torchrun --nproc_per_node {world} -m featvlr.cli"
    if args[:1] == ["train"]:
        args = list(args)
        if not any(a in ("--out", "-o") or a.startswith("--out=") for a in args):
            args += ["--out", str(run_dir)]
        if "--resume" not in args:
            args.append("--resume")
        return f"{prefix} {shlex.join(args)}"
    args = ["train", "--config", str(run_dir / "config.yaml"), "--out", str(run_dir), "--resume"]
    return f"{prefix} {shlex.join(args)}"


def remove_fresh_run(run_dir: Path, existed: bool) -> None:
    """Remove what a new run wrote into ``run_dir`` before its first checkpoint (its config,
    log, TensorBoard folder, empty ``ckpt``/``eval`` folders), and the folder itself when it
    is then empty and did not exist before. Anything else (a stage's own run) stays."""
    if (run_dir / "ckpt" / "last.pt").exists() or not run_dir.is_dir():
        return
    for name in ("config.yaml", "log.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    for name in ("ckpt", "eval"):
        sub = run_dir / name
        if sub.is_dir() and not any(p.suffix == ".pt" or p.suffix == ".json" for p in sub.rglob("*")):
            shutil.rmtree(sub, ignore_errors=True)
    if not existed and not any(run_dir.iterdir()):
        run_dir.rmdir()


def check_resumable(ckpt: dict[str, Any], cfg: Any, path: Path) -> None:
    """The checkpoint must be of the configured method (checked before any weight is loaded)."""
    if ckpt.get("method") != cfg.method:
        raise InputError(path, f"--resume: the checkpoint is a {ckpt.get('method')!r} run, the config asks for "
                         f"{cfg.method!r}")


def check_state_dict(method: Any, state: dict[str, Any], path: Path) -> None:
    """Name the first differences between a checkpoint's weights and the model's, if any."""
    own = method.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        parts = [f"{name}: {', '.join(items[:3])}" + (" ..." if len(items) > 3 else "")
                 for name, items in (("missing", missing), ("unexpected", extra), ("shape", shapes)) if items]
        raise InputError(path, "--resume: the checkpoint's weights do not fit the configured model ("
                         + "; ".join(parts) + ")")
