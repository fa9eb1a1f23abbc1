"""Checkpoints: tensors and plain data only, written atomically.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (the config as a
dict, RNG states as tensors), so it loads with ``torch.load(weights_only=True)``: opening
a checkpoint from elsewhere runs no code. Rebuilding a method from one is
:func:`featvlr.inference.loading.load_method` (it needs the configs and the method registry).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr import __version__
from featvlr.core.errors import InputError
from featvlr.core.fileio import atomic_path

CHECKPOINT_FORMAT = "featvlr-checkpoint-v1"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain data."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python_version": py[0],
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": py[2] if py[2] is None else float(py[2]),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((int(state["python_version"]), tuple(int(x) for x in state["python_state"].tolist()),
                     state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`featvlr.core.fileio.atomic_path`)."""
    payload = {"format": CHECKPOINT_FORMAT, "featvlr_version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a bad file is an :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise InputError(path, f"not a readable featvlr checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a featvlr checkpoint (missing or unknown format tag)")
    return ckpt


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder -> ``ckpt/<which>.pt`` (falling back to ``last.pt``); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt"):
            cand = path / "ckpt" / name
            if cand.exists():
                return cand
        raise InputError(path, "the run folder has no ckpt/best.pt or ckpt/last.pt")
    if not path.exists():
        raise InputError(path, "no such run folder or checkpoint")
    return path
