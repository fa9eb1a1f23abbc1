"""A run folder describes its own checkpoints: the resolved config is fixed at the first start.

:func:`check_run_config` is what the trainer calls before it writes anything:

- a new run into a folder whose ``config.yaml`` holds another resolved config is refused,
  naming the differing keys;
- ``--resume`` may change only the settings in :data:`RESUMABLE_KEYS` (how long to train,
  where rows live, progress and logging); the changes are returned for the run log;
- resuming to fewer epochs than the checkpoint has done is refused.

:func:`config_hash` is the SHA-256 of a config's canonical JSON; checkpoints and results
carry it, so a result can always be traced to the config its weights were trained with.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from featvlr.config import Config, config_to_dict, load_config
from featvlr.core.errors import InputError
from featvlr.core.flatten import flatten_numbers

# Settings a resumed run may change; they do not change what the finished epochs computed.
RESUMABLE_KEYS = frozenset({
    "train.epochs", "train.progress", "train.log_every", "train.tensorboard", "train.device",
    "data.prefetch", "data.in_memory", "data.on_device", "eval.batch_size", "eval.chunk_elements",
})


def config_hash(cfg: Config | dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a resolved config."""
    data = config_to_dict(cfg) if isinstance(cfg, Config) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def config_differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``key -> (old, new)`` for every setting that differs (keys as ``section.name``)."""
    a = flatten_numbers(config_to_dict(old))
    b = flatten_numbers(config_to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _describe(diff: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    items = [f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in diff.items()]
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def check_run_config(run_dir: str | Path, cfg: Config, *, resume: bool, done_epochs: int | None = None
                     ) -> dict[str, tuple[Any, Any]]:
    """Refuse a run whose resolved config contradicts the folder's (see the module docstring).

    Returns the resumable settings that changed (empty for a new run or an identical resume).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    try:
        saved = load_config(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable record is the folder's problem
        raise InputError(path, f"the run folder's config cannot be read ({exc}); choose another --out") from None
    diff = config_differences(saved, cfg)
    if not diff:
        return {}
    fixed = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
    if not resume or fixed:
        what = "resumed" if resume else "started again"
        raise InputError(path, f"this run folder was trained with another config and cannot be {what} with "
                         f"this one ({_describe(fixed or diff)}); choose another --out")
    epochs = diff.get("train.epochs")
    if epochs is not None and done_epochs is not None and int(epochs[1]) < done_epochs:
        raise InputError(path, f"the checkpoint has done {done_epochs} epochs; train.epochs={epochs[1]} would "
                         "describe it wrongly (resume with at least as many epochs, or choose another --out)")
    return diff
