"""Write a report: read the runs, group and label them, compute the tables, the query changes
and the plots, and write ``report.md``, ``report.csv`` and ``report.html``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from featvlr.core.errors import ConfigError, InputError
from featvlr.report.labels import group_variants, variant_of
from featvlr.report.plots import key_plot, training_curves
from featvlr.report.queries import rank_changes
from featvlr.report.render import ReportData, write_csv, write_html, write_markdown
from featvlr.report.runs import load_run
from featvlr.report.stats import best_per_column, best_variant, headline_columns, significance, summarize
from featvlr.report.strongest import strongest_vse_notes


def write_report(run_dirs: list[str | Path], out: str | Path, *, baseline: str | None = None,
                 grid_keys: list[str] | None = None, vs: list[str] | None = None, group_by: str | None = None,
                 labels: dict[str, str] | None = None, top_queries: int = 5) -> dict[str, Any]:
    """Write report.md, report.csv, plots and report.html for ``run_dirs`` into ``out``.

    Args:
        run_dirs: finished run folders.
        out: the report folder (created).
        baseline: the variant the others are tested against: a label, one of its run
            folders, or an ablation cell name (``method=vse``); default the first variant.
        grid_keys: an ablation's grid keys: every label shows them and each gets a plot.
        vs: more keys to plot the metrics against (``--vs``).
        group_by: group the runs by this key alone (``--group-by``).
        labels: ``{run folder or label: name}`` (``--label RUN=NAME``).
        top_queries: queries listed per direction in the wins and losses.

    Returns:
        Paths (``markdown``, ``csv``, ``html``, ``plots``), ``baseline`` and ``variants``
        (labels), ``p_values``, ``table`` (``{label: {metric: [mean, std, n]}}``) and the
        ``headline`` text that ``featvlr report`` prints.
    """
    out = Path(out)
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise InputError(out, "no finished runs to report")
    grid_keys = list(grid_keys or [])
    variants = group_variants(runs, group_by=group_by, always=grid_keys, labels=labels)
    base = variant_of(variants, baseline) if baseline is not None else variants[0]
    if base is None:
        raise ConfigError(f"--baseline {baseline}: no such variant ({', '.join(v.label for v in variants)})")
    out.mkdir(parents=True, exist_ok=True)
    columns, table = summarize(variants)
    data = ReportData(variants=variants, columns=columns, headline=headline_columns(columns), table=table,
                      best=best_per_column(columns + ["train time (s)"], table) if len(variants) > 1 else {},
                      p_values=significance(variants, base), baseline=base, n_runs=len(runs))
    data.best.pop("train time (s)", None)
    data.other = best_variant(variants, table, base)
    if data.other is not None:
        data.changes = rank_changes(base, data.other, top=top_queries)
        if not data.changes:
            data.notes.append("No per-query ranks (eval/<split>_ranks.npz) for the baseline and the best variant: "
                              "the query-level comparison and the p-values need them.")
    data.notes.extend(metric_notes(variants, columns, table))
    data.notes.extend(strongest_vse_notes(variants))
    data.notes.extend(run_warnings(variants))
    plot_keys = [k for k in grid_keys + list(vs or []) if k]
    plot_keys = [k for i, k in enumerate(plot_keys) if k not in plot_keys[:i]]
    for key in plot_keys:
        path = key_plot(variants, table, key, grid_keys or plot_keys, out)
        if path is not None:
            data.plots.append(path)
    curves = training_curves(variants, out)
    if curves is not None:
        data.plots.append(curves)
    headline = write_markdown(data, out / "report.md")
    write_csv(data, out / "report.csv")
    write_html(data, out / "report.html")
    return {"markdown": out / "report.md", "csv": out / "report.csv", "html": out / "report.html",
            "plots": data.plots, "baseline": base.label, "variants": [v.label for v in variants],
            "p_values": data.p_values, "headline": headline,
            "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()}}


def metric_notes(variants: list[Any], columns: list[str], table: dict) -> list[str]:
    """What a column that looks redundant means: ``<scenario>/ndcg_exp@K_nonzero`` against
    ``<scenario>/ndcg_exp@K``, and in how many rows they differ."""
    notes = []
    for col in columns:
        if not col.endswith("_nonzero") or col[: -len("_nonzero")] not in columns:
            continue
        plain = col[: -len("_nonzero")]
        rows = [v.label for v in variants if col in table.get(v.label, {}) and plain in table.get(v.label, {})]
        differ = [r for r in rows if abs(table[r][col][0] - table[r][plain][0]) > 1e-9]
        name, base = col.split("/", 1)[1], plain.split("/", 1)[1]
        lead = (f"{name} is the mean over the queries whose NDCG is not zero (TERAN's i2t average); {base} is the "
                "mean over all queries. They differ only when some query has no relevant item (relevance above "
                "zero) in its top K")
        if differ:
            notes.append(f"{lead}: {col} differs from {base} in {len(differ)} of {len(rows)} rows "
                         f"({', '.join(differ)}).")
        else:
            notes.append(f"{lead}; it equals {base} in every row here: with ROUGE-L relevance nearly every caption "
                         "shares a word with some caption of every image, so every query's top K holds relevant "
                         "items.")
    return notes


def run_warnings(variants: list[Any]) -> list[str]:
    """The trainer's warnings of every run (a collapsed embedding space, a loss term that never
    acted; ``warning`` events of its log), one note per variant and message, naming the seeds."""
    notes: dict[tuple[str, str], list[str]] = {}
    for variant in variants:
        for run in variant.runs:
            for event in run.log:
                if event.get("event") == "warning":
                    notes.setdefault((variant.label, str(event.get("message"))), []).append(str(run.seed))
    return [f"Warning, {label} (seed {', '.join(seeds)}): {message}" for (label, message), seeds in notes.items()]
