"""Plots of a results record: Recall@K curves and one bar-chart panel per scenario."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from featvlr.fileio import atomic_path


def group_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"i2t/R@1": v, "rsum": w}`` -> ``{"i2t": {"R@1": v}, "summary": {"rsum": w}}``."""
    groups: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        scen, sep, metric = key.partition("/")
        if not sep:
            scen, metric = "summary", key
        groups.setdefault(scen, {})[metric] = value
    return groups


def plot_results(record: dict[str, Any], stem: str | Path) -> list[Path]:
    """``<stem>_recall.png`` (Recall@K curves) and ``<stem>_scenarios.png`` (one bar chart
    panel per scenario); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    written = []
    curves = record.get("curves") or {}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, ys in curves.items():
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, label=name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Recall@K, split {record.get('protocol', {}).get('split')}")
        fig.tight_layout()
        p = Path(f"{stem}_recall.png")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(p)
    groups: dict[str, dict[str, float]] = {}
    for scen, vals in group_metrics(record.get("metrics") or {}).items():
        # recalls (percent) and NDCG (fractions) in separate panels, so both stay readable
        rec = {m: v for m, v in vals.items() if not m.startswith("ndcg") and m not in ("medr", "meanr", "n_queries")}
        ndcg = {m: v for m, v in vals.items() if m.startswith("ndcg")}
        if rec:
            groups[scen] = rec
        if ndcg:
            groups[f"{scen} NDCG" if rec else scen] = ndcg
    if groups:
        n = len(groups)
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, (scen, vals) in zip(axes.flat, groups.items()):
            is_ndcg = all(m.startswith("ndcg") for m in vals)
            ax.bar(range(len(vals)), list(vals.values()), color="tab:orange" if is_ndcg else "tab:blue")
            if is_ndcg:
                ax.set_ylim(0, 1)
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(list(vals.keys()), rotation=45, ha="right", fontsize=7)
            ax.set_title(scen, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        p = Path(f"{stem}_scenarios.png")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(p)
    return written
