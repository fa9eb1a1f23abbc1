"""The runs a report reads: a finished run folder (config, test metrics, per-query ranks,
log, training time), and the run folders an argument names (a run, or an ablation folder
with its ``ablation.yaml``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from featvlr.core.errors import InputError
from featvlr.core.runlog import read_log


@dataclass
class RunRecord:
    """One finished run as the report sees it."""

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, float]
    ranks: dict[str, np.ndarray] | None
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.config.get("train", {}).get("seed", 0))

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def test_split(self) -> str:
        return str(self.config.get("data", {}).get("test_split") or "")

    @property
    def examples(self) -> Path | None:
        """The run's examples page (``featvlr eval RUN --examples N``) on its test split, else on
        another split, when it has one."""
        pages = [self.run_dir / "eval" / f"{self.test_split}_examples.html"] if self.test_split else []
        pages += sorted((self.run_dir / "eval").glob("*_examples.html")) + [self.run_dir / "eval" / "examples.html"]
        return next((page for page in pages if page.exists()), None)

    @property
    def train_seconds(self) -> float | None:
        """Seconds spent in training epochs (the ``time_s`` of the log's epoch records)."""
        times = [float(r["time_s"]) for r in self.log if r.get("event") == "epoch" and "time_s" in r]
        return float(sum(times)) if times else None


def load_run(run_dir: str | Path) -> RunRecord:
    """A finished run: its resolved config, test metrics, per-query ranks (when saved) and log."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise InputError(run_dir, "not a featvlr run folder (no config.yaml)")
    config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    split = config.get("data", {}).get("test_split") or ""
    res_path = run_dir / "eval" / f"{split}.json"
    if split:
        if not res_path.exists():
            raise InputError(run_dir, f"the run has no eval/{split}.json (not finished?)")
        try:
            metrics = json.loads(res_path.read_text(encoding="utf-8"))["metrics"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise InputError(res_path, f"not a featvlr results file ({exc})") from None
    else:  # no test split (FashionIQ, Shoes): the selection split's metrics of best.pt
        from featvlr.core.checkpoint import load_checkpoint

        metrics = {k: v for k, v in load_checkpoint(run_dir / "ckpt" / "best.pt")["best_metrics"].items()
                   if isinstance(v, (int, float))}
    ranks_path = run_dir / "eval" / f"{split}_ranks.npz"
    ranks = None
    if ranks_path.exists():
        with np.load(ranks_path) as z:
            ranks = {k: z[k] for k in z.files}
    return RunRecord(run_dir, config, {k: float(v) for k, v in metrics.items()}, ranks, read_log(run_dir))


@dataclass
class RunSelection:
    """The run folders of a report and what the ablations among them declare."""

    run_dirs: list[Path]
    grid_keys: list[str]
    baseline_run: Path | None = None
    skipped: list[Path] = field(default_factory=list)


def ablation_of(run_dir: Path) -> Path | None:
    """The ablation folder a run belongs to (``<ablation>/<cell>/seed<N>``), if any."""
    for parent in (run_dir.parent.parent, run_dir.parent):
        if (parent / "ablation.yaml").exists():
            return parent
    return None


def read_ablation(folder: Path) -> dict[str, Any]:
    data = yaml.safe_load((folder / "ablation.yaml").read_text(encoding="utf-8")) or {}
    data.setdefault("grid_keys", list(data.get("grid") or {}))
    return data


def select_runs(paths: list[str | Path]) -> RunSelection:
    """Expand ablation folders into their finished runs; collect the grid keys they declare
    (``ablation.yaml``, written by ``featvlr ablate``) and the ablation's baseline run (its
    first grid cell)."""
    run_dirs: list[Path] = []
    grid_keys: list[str] = []
    baseline = None
    skipped: list[Path] = []
    for p in map(Path, paths):
        if (p / "ablation.yaml").exists():
            abl = read_ablation(p)
            cells = [p / r for r in abl.get("runs", [])]
            done = [c for c in cells if (c / "config.yaml").exists() and _finished(c)]
            skipped += [c for c in cells if c not in done]
            run_dirs += done
            if baseline is None and cells:
                baseline = cells[0]
            grid_keys += [k for k in abl["grid_keys"] if k not in grid_keys]
        elif (p / "config.yaml").exists():
            run_dirs.append(p)
            abl_dir = ablation_of(p)
            if abl_dir is not None:
                grid_keys += [k for k in read_ablation(abl_dir)["grid_keys"] if k not in grid_keys]
        else:
            raise InputError(p, "neither a run folder (config.yaml) nor an ablation folder (ablation.yaml)")
    return RunSelection(run_dirs, grid_keys, baseline, skipped)


def _finished(run_dir: Path) -> bool:
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    split = (config.get("data") or {}).get("test_split")
    if split:
        return (run_dir / "eval" / f"{split}.json").exists()
    return (run_dir / "ckpt" / "best.pt").exists()
