"""The report's figures: a metric against each grid key (an ablation's keys, or ``--vs``),
and the training curves.

A numeric key is an x axis (sorted; logarithmic when its values span two decades); any
other key (``method``) is a set of categories at fixed positions. Lines are the cells of
the other grid keys, with error bars of one standard deviation over seeds. Legends sit
outside the axes, so they never cover data; layouts are constrained, so nothing warns.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.report.labels import Variant, format_value, short_keys
from featvlr.report.stats import Table, scenario_of

PLOT_METRICS = ("rsum", "i2t/R@1", "t2i/R@1")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _legend(fig, ax, n_lines: int, title: str | None = None) -> None:
    if n_lines > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title=title,
                  title_fontsize=8)


def y_from_zero(ax, values: list[float]) -> bool:
    """Start the y-axis at 0 so that small differences look small; where a value is negative
    (a loss can be) the axis keeps matplotlib's range and its label says the axis is cut.
    Returns whether the axis starts at 0."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if finite and min(finite) >= 0:
        ax.set_ylim(bottom=0, top=max(finite) * 1.08 if max(finite) > 0 else 1.0)
        return True
    ax.set_ylabel(ax.get_ylabel() + " (axis cut: it does not start at 0)", fontsize=8)
    return False


def key_plot(variants: list[Variant], table: Table, key: str, line_keys: list[str], out: Path) -> Path | None:
    """``metrics_vs_<key>.png``: up to three metrics against ``key``'s values; None when the
    variants hold fewer than two values of ``key`` or no plotted metric."""
    metrics = [m for m in PLOT_METRICS if any(m in table[v.label] for v in variants)]
    if not metrics:
        first = next(iter(table.values()), {})
        metrics = [m for m in first if m != "train time (s)"][:1]
    xs_all = [v.value(key) for v in variants]
    if len({json.dumps(x, default=str) for x in xs_all}) < 2 or not metrics:
        return None
    numeric = all(_is_number(x) for x in xs_all)
    categories: list[str] = []
    if not numeric:
        for x in xs_all:
            if format_value(x) not in categories:
                categories.append(format_value(x))
    others = [k for k in line_keys if k != key]
    short = short_keys(others)
    lines: dict[str, list[Variant]] = {}
    for v in variants:
        name = ", ".join(f"{short[k]}={format_value(v.value(k))}" for k in others) or "all"
        lines.setdefault(name, []).append(v)
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics) + (1.8 if len(lines) > 1 else 0), 3.4),
                             squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        tops: list[float] = []
        for i, (name, vs) in enumerate(lines.items()):
            pts = [(v.value(key), *table[v.label][metric][:2]) for v in vs if metric in table[v.label]]
            if not pts:
                continue
            tops += [t[1] + t[2] for t in pts] + [t[1] - t[2] for t in pts]
            if numeric:
                pts.sort(key=lambda t: float(t[0]))
                x = [float(t[0]) for t in pts]
                ax.errorbar(x, [t[1] for t in pts], yerr=[t[2] for t in pts], marker="o", capsize=3, label=name)
            else:
                offset = (i - (len(lines) - 1) / 2) * 0.08
                x = [categories.index(format_value(t[0])) + offset for t in pts]
                ax.errorbar(x, [t[1] for t in pts], yerr=[t[2] for t in pts], marker="o", capsize=3,
                            linestyle="none", label=name)
        if numeric:
            vals = [float(x) for x in xs_all]
            if min(vals) > 0 and max(vals) / min(vals) >= 100:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(categories)), categories)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        scen, m = scenario_of(metric)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(("sum of recalls (%)" if m.startswith("rsum") else "percent" if m.startswith("R")
                       else "value") + (" ± std" if any(len(v.runs) > 1 for v in variants) else ""), fontsize=8)
        y_from_zero(ax, tops)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0][-1], len(lines), title=", ".join(short.values()) or None)
    fig.suptitle(f"test metrics against {key}", fontsize=10)
    path = out / f"metrics_vs_{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _integer_epochs(ax, epochs: list[int]) -> None:
    """Whole-epoch x ticks only; a curve of one epoch gets half an epoch of room either side
    (matplotlib's own margin would leave no whole number but that epoch on the axis)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs and max(epochs) - min(epochs) < 1:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def training_curves(variants: list[Variant], out: Path) -> Path | None:
    """``training_curves.png``: the dev selection metric per epoch, mean over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    plotted = 0
    all_ys: list[float] = []
    all_epochs: list[int] = []
    ylabel = "selection metric"
    for v in variants:
        curves = []
        for r in v.runs:
            train_cfg = r.config.get("train", {})
            key = f"{train_cfg.get('select_split', 'dev')}/{train_cfg.get('select_metric', 'rsum')}"
            ylabel = key
            ys = [(rec["epoch"], rec[key]) for rec in r.log if rec.get("event") == "epoch" and key in rec]
            if ys:
                curves.append(dict(ys))
        if curves:
            epochs = sorted(set().union(*curves))
            ys = [np.mean([c[e] for c in curves if e in c]) for e in epochs]
            ax.plot(epochs, ys, marker="o", label=v.label)
            all_ys += ys
            all_epochs += epochs
            plotted += 1
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ylabel} (mean over seeds)", fontsize=8)
    y_from_zero(ax, all_ys)
    ax.grid(alpha=0.3)
    _integer_epochs(ax, all_epochs)
    _legend(fig, ax, max(plotted, 2 if plotted else 0))
    ax.set_title("training curves", fontsize=10)
    path = out / "training_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
