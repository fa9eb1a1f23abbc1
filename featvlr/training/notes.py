"""What a reader of a run's numbers must know, said by the trainer: loss terms that never
acted and a collapsed embedding space (:mod:`featvlr.evaluation.geometry`).

:func:`run_warnings` gives the warnings a run logs, prints at its end and records in its
results JSON; :func:`geometry_note` the geometry part of each epoch line.
"""
from __future__ import annotations

from typing import Any

from featvlr.evaluation.geometry import collapse_warning


def run_warnings(active: dict[str, bool], best_metrics: dict[str, Any], select_split: str, steps: int) -> list[str]:
    """What a reader of this run's numbers must know: :func:`inactive_terms`, and a collapsed
    embedding space at the chosen checkpoint."""
    collapsed = collapse_warning(best_metrics)
    return inactive_terms(active, steps) + (
        [f"at the selected checkpoint ({select_split} split) {collapsed}"] if collapsed else [])


def inactive_terms(active: dict[str, bool], steps: int) -> list[str]:
    """One warning per loss term (or ``*_on`` switch) that was zero at every step."""
    return [f"{name} was zero at every one of the run's {steps} steps: the term never acted (a weight of 0, or a "
            "warm-up or switch-on point past the end of the run?), so its effect is not in these numbers"
            for name, on in sorted(active.items()) if not on]


def geometry_note(metrics: dict[str, Any]) -> str:
    """The epoch line's ``, cos img 0.10 txt 0.02`` (and `` (collapsed)``); "" without geometry."""
    img, txt = metrics.get("geometry/img_cos"), metrics.get("geometry/txt_cos")
    if img is None or txt is None:
        return ""
    return f", cos img {img:.2f} txt {txt:.2f}" + (" (collapsed)" if collapse_warning(metrics) else "")


__all__ = ["geometry_note", "inactive_terms", "run_warnings"]
