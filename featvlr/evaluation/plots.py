"""Plots of a results record: Recall@K curves and bar-chart panels, one unit per panel
(recalls in percent, NDCG as fractions, rsum alone), values on the bars, and a title that
names the run, the method and the split."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from featvlr.core.fileio import atomic_path


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
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        for name, ys in curves.items():
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, label=name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_xscale("log")
        longest = max((len(ys) for ys in curves.values()), default=1)
        ticks = [k for k in (1, 5, 10, 20, 50, 100) if k <= longest]
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"Recall@K · {figure_title(record)}", fontsize=9)
        p = Path(f"{stem}_recall.png")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(p)
    panels = scenario_panels(record.get("metrics") or {})
    if panels:
        n = len(panels)
        cols = min(4, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.5), squeeze=False,
                                 layout="constrained")
        for ax, (title, unit, vals) in zip(axes.flat, panels):
            color = {"%": "tab:blue", "0-1": "tab:orange"}.get(unit, "tab:green")
            bars = ax.bar(range(len(vals)), list(vals.values()), color=color, width=0.7)
            ax.bar_label(bars, labels=[_bar_value(v, unit) for v in vals.values()], fontsize=7, padding=2)
            top = max([0.0] + list(vals.values()))
            ax.set_ylim(0, {"%": 100.0, "0-1": 1.0}.get(unit, top) * 1.15 or 1.0)
            pad = max(0.0, (3 - len(vals)) / 2)  # one or two bars keep a bar's width
            ax.set_xlim(-0.5 - pad, len(vals) - 0.5 + pad)
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(list(vals.keys()), rotation=30 if len(vals) > 3 else 0, ha="right" if len(vals) > 3
                               else "center", fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel({"%": "percent", "0-1": "fraction (0-1)"}.get(unit, unit), fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(figure_title(record), fontsize=10)
        p = Path(f"{stem}_scenarios.png")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(p)
    return written


def scenario_panels(metrics: dict[str, float]) -> list[tuple[str, str, dict[str, float]]]:
    """``(title, unit, {metric: value})`` panels, one unit each: recalls in percent, NDCG as
    fractions, rsum (a sum of recalls) alone; ranks (medr, meanr) and counts are left out."""
    panels = []
    for scen, vals in group_metrics(metrics).items():
        if scen == "summary":
            sums = {m: v for m, v in vals.items() if m.startswith("rsum")}
            means = {m: v for m, v in vals.items() if m.startswith("r_mean")}
            if sums:
                panels.append(("rsum (sum of recalls)", "sum of %", sums))
            if means:
                panels.append(("mean recall", "%", means))
            continue
        rec = {m: v for m, v in vals.items()
               if not m.startswith("ndcg") and m not in ("medr", "meanr", "n_queries")}
        ndcg = {m: v for m, v in vals.items() if m.startswith("ndcg")}
        if rec:
            panels.append((f"{scen}: recall (%)", "%", rec))
        if ndcg:
            panels.append((f"{scen}: NDCG (0-1)", "0-1", ndcg))
    return panels


def figure_title(record: dict[str, Any]) -> str:
    """``run runs/demo_vse · method vse · split test`` from a results record."""
    inputs = record.get("input") or {}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    path = inputs.get("path")
    run = None
    if path:
        p = Path(str(path))
        run = str(p.parent.parent) if p.suffix == ".pt" and p.parent.name == "ckpt" else str(p)
    parts = [f"run {run}" if run else None, f"method {inputs.get('method') or config.get('method')}"
             if (inputs.get("method") or config.get("method")) else None,
             f"split {inputs.get('split') or (record.get('protocol') or {}).get('split')}"]
    return " · ".join(p for p in parts if p)


def _bar_value(value: float, unit: str) -> str:
    return f"{value:.3f}" if unit == "0-1" else f"{value:.1f}"
