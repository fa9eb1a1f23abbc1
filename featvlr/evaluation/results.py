"""Results of an evaluation: the results JSON (metrics, protocol, inputs, config, versions,
device, time) and the printed table; the plots are :mod:`featvlr.evaluation.plots`."""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from featvlr import __version__
from featvlr.core.fileio import atomic_write_text
from featvlr.evaluation.options import protocol_first_images, protocol_folds, protocol_record
from featvlr.evaluation.plots import group_metrics, plot_results


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _config_dict(config: Any) -> Any:
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return config
    return str(config)


def write_results(path: str | Path, metrics: dict[str, float], *, split: str | None, cfg: Any = None,
                  curves: dict[str, list[float]] | None = None, device: str = "cpu", seconds: float = 0.0,
                  checkpoint: str | Path | None = None, protocol: dict[str, Any] | None = None,
                  inputs: dict[str, Any] | None = None, seed: int | None = None, extra: dict[str, Any] | None = None,
                  plots: bool = True, config_sha256: str | None = None) -> dict[str, Any]:
    """Write a results JSON (atomically) and, with ``plots``, ``<stem>_recall.png`` and
    ``<stem>_scenarios.png`` beside it. Returns the record written, plus ``"json"``.

    The record holds ``metrics``, ``protocol`` (split, folds, K, gains, tie rule; from
    ``cfg`` when not given), ``input``, ``config``, ``seed``, ``versions`` (featvlr, torch,
    numpy, python), ``device``, ``time_s``, ``created`` and ``curves``. ``config_sha256`` is
    the hash of the config the weights were trained with (the checkpoint's own, when there is
    one); numbers are written without float noise (:func:`clean_number`).
    """
    import torch

    path = Path(path)
    if protocol is None:
        ev = getattr(cfg, "eval", None)
        folds = protocol_folds(cfg) if cfg is not None else (1,)
        protocol = protocol_record(split=split, metrics=metrics, folds=folds,
                                   ndcg_ks=tuple(getattr(ev, "ndcg_ks", (10, 20, 50))),
                                   ndcg_exp_k=int(getattr(ev, "ndcg_exp_k", 25)),
                                   first_images=protocol_first_images(cfg) if cfg is not None else 0)
    if seed is None and cfg is not None:
        seed = getattr(getattr(cfg, "train", None), "seed", None)
    inputs = dict(inputs or {})
    if checkpoint is not None:
        inputs.setdefault("path", str(checkpoint))
    record: dict[str, Any] = {
        "metrics": {k: clean_number(v) for k, v in metrics.items()},
        "protocol": protocol,
        "input": inputs,
        "config": _config_dict(cfg),
        "config_sha256": config_sha256,
        "seed": seed,
        "versions": {"featvlr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "device": _device_name(str(device)),
        "time_s": round(float(seconds), 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "curves": {k: [clean_number(x) for x in v] for k, v in (curves or {}).items()},
        **(extra or {}),
    }
    atomic_write_text(path, json.dumps(record, indent=2, default=_json_default))
    if plots:
        plot_results(record, path.with_suffix(""))
    record["json"] = str(path)
    return record


def clean_number(value: Any, digits: int = 10) -> float:
    """``value`` as a float rounded to ``digits`` decimals: ``55.00000000000001`` -> ``55.0``.

    Metrics are percentages (two decimals are meaningful) or fractions in [0, 1]; ten decimals
    keep every digit a metric carries and drop the noise of ``100.0 * mean(...)``.
    """
    v = float(value)
    return round(v, digits) if np.isfinite(v) else v


def checkpoint_config_hash(path: str | Path) -> str | None:
    """The ``config_sha256`` a run folder's (``ckpt/best.pt``) or a checkpoint file's weights
    were trained with; computed from its stored config for checkpoints written before the
    hash was stored; None when the checkpoint holds no config."""
    from featvlr.config.provenance import config_hash
    from featvlr.core.checkpoint import load_checkpoint, resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(path))
    if ckpt.get("config_sha256"):
        return str(ckpt["config_sha256"])
    return config_hash(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def format_table(metrics: dict[str, float]) -> str:
    """One line per scenario: ``scenario  metric value  metric value ...``."""
    if not metrics:
        return "(no metrics: the split has no ground truth)"
    groups = group_metrics(metrics)
    if "summary" in groups:
        groups["summary"] = groups.pop("summary")  # last
    width = max(len(s) for s in groups)
    lines = []
    for scen, vals in groups.items():
        cells = [f"{m} {_fmt(m, v)}" for m, v in vals.items()]
        lines.append(f"{scen:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def format_results(record: dict[str, Any], run: str | Path | None = None) -> str:
    """The metric table of a results record, with what it measures on the line above it:
    ``test split · method vse · run runs/demo_vse``."""
    inputs = record.get("input") or {}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    split = inputs.get("split") or (record.get("protocol") or {}).get("split")
    method = inputs.get("method") or config.get("method")
    if run is None:
        run = run_name(inputs.get("path"))
    parts = [f"{split} split" if split else "results"]
    if method:
        parts.append(f"method {method}")
    if run:
        parts.append(f"run {run}")
    if inputs.get("members"):
        parts.append("ensemble of " + ", ".join(str(run_name(m.get("path"))) for m in inputs["members"]))
    text = " · ".join(parts) + "\n" + format_table(record.get("metrics") or {})
    return text + "".join(f"\nwarning: {w}" for w in record.get("warnings") or [])


def run_name(path: str | Path | None) -> str | None:
    """The run folder a checkpoint path belongs to (``runs/x/ckpt/best.pt`` -> ``runs/x``)."""
    if not path:
        return None
    p = Path(path)
    if p.suffix == ".pt" and p.parent.name == "ckpt":
        return str(p.parent.parent)
    return str(p)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric.startswith("ndcg") else f"{value:.2f}"
