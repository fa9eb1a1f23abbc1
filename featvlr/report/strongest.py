"""Each method against the strongest ``vse`` of the report, chosen on dev.

A gain over an untuned or collapsed baseline is not a gain (``docs/results.md``: the demo's
``vse`` recipe once collapsed and made every method look good). When a report holds several
``vse`` variants (an ablation over its loss, say), the one with the highest mean best dev
selection metric (``train.select_metric`` on ``data.dev_split``, read from each run's log, never
from test) is the reference, and every other method's test rsum is compared with it, paired by
seed: **holds** when ahead on every shared seed, **mixed** when ahead on average only, **does
not hold** otherwise.
"""
from __future__ import annotations

import statistics
from typing import Any


def best_dev_value(run: Any) -> float | None:
    """The best dev selection metric over a run's epochs (the value that chose best.pt)."""
    cfg = run.config
    key = f"{(cfg.get('data') or {}).get('dev_split', 'dev')}/{(cfg.get('train') or {}).get('select_metric', 'rsum')}"
    values = [float(r[key]) for r in run.log if r.get("event") == "epoch" and isinstance(r.get(key), (int, float))]
    return max(values) if values else None


def strongest_vse(variants: list[Any]) -> tuple[Any, float] | None:
    """The ``vse`` variant with the highest mean best dev value, and that value."""
    scored = []
    for variant in variants:
        if any(run.method != "vse" for run in variant.runs):
            continue
        values = [v for v in (best_dev_value(run) for run in variant.runs) if v is not None]
        if values:
            scored.append((statistics.fmean(values), variant))
    if not scored:
        return None
    value, variant = max(scored, key=lambda item: item[0])
    return variant, value


def verdict(diffs: list[float]) -> str:
    if all(d > 0 for d in diffs):
        return "holds"
    return "mixed" if statistics.fmean(diffs) > 0 else "does not hold"


def strongest_vse_notes(variants: list[Any]) -> list[str]:
    """Notes for the report: which ``vse`` is the strongest on dev, and each method against it."""
    found = strongest_vse(variants)
    others = [v for v in variants if any(run.method != "vse" for run in v.runs)]
    if found is None or not others:
        return []
    best, dev = found
    n_vse = sum(1 for v in variants if all(run.method == "vse" for run in v.runs))
    notes = [f"Strongest vse on dev: {best.label} (mean best dev value {dev:.2f}, the highest of {n_vse} vse "
             "variant(s)); every method's claim below is against it, paired by seed on test rsum."]
    base = {run.seed: run.metrics.get("rsum") for run in best.runs}
    for variant in others:
        diffs = [run.metrics["rsum"] - base[run.seed] for run in variant.runs
                 if run.seed in base and base[run.seed] is not None and "rsum" in run.metrics]
        if not diffs:
            notes.append(f"{variant.label} − {best.label}: no seed in common, no paired comparison.")
            continue
        spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
        notes.append(f"{variant.label} − {best.label}: test rsum {statistics.fmean(diffs):+.2f}{spread} over "
                     f"{len(diffs)} seed(s), {verdict(diffs)}.")
    return notes


__all__ = ["best_dev_value", "strongest_vse", "strongest_vse_notes", "verdict"]
