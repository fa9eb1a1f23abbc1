"""The report's files: ``report.md``, ``report.csv`` and ``report.html`` (no scripts, no
external resources; the plots are linked beside it)."""
from __future__ import annotations

import csv
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featvlr.report.labels import Variant
from featvlr.report.queries import DIRECTIONS, QueryChange
from featvlr.report.stats import TRAIN_TIME, Table, column_order, scenario_of


@dataclass
class ReportData:
    """Everything a report shows."""

    variants: list[Variant]
    columns: list[str]
    headline: list[str]
    table: Table
    best: dict[str, str]
    p_values: dict[str, float | None]
    baseline: Variant
    other: Variant | None = None
    changes: dict[str, dict[str, list[QueryChange]]] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    n_runs: int = 0
    notes: list[str] = field(default_factory=list)


def header_name(column: str) -> str:
    """``i2i/ndcg_lin@10`` -> ``i2i ndcg_lin@10``: the metric's own name (it states the gain), as
    in the results JSON and the tables; ``composed/recall_avg`` -> ``composed recall_avg``."""
    if column == TRAIN_TIME:
        return "train time"
    scen, metric = scenario_of(column)
    return metric if scen == "summary" else f"{scen} {metric}"


def fmt_cell(v: tuple[float, float, int] | None, column: str) -> str:
    if v is None:
        return ""
    mean, std, n = v
    if column == TRAIN_TIME:
        return _duration(mean) + (f" ± {_duration(std)}" if n > 1 else "")
    digits = 4 if "ndcg" in column else 2  # NDCG is a fraction, the others percentages or ranks
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def fmt_p(data: ReportData, v: Variant) -> str:
    if v is data.baseline:
        return "baseline"
    p = data.p_values.get(v.label)
    return "n/a" if p is None else f"{p:.4f}"


def fmt_rank(r: float) -> str:
    return f"{r:.0f}" if abs(r - round(r)) < 1e-9 else f"{r:.1f}"


def _legend_line(data: ReportData) -> str:
    seeds = sorted({len(v.runs) for v in data.variants})
    return (f"{data.n_runs} runs, {len(data.variants)} variants ({'/'.join(map(str, seeds))} seeds each); "
            "mean ± std over seeds" + ("; best per column marked" if len(data.variants) > 1 else "")
            + f"; p = paired randomisation test of rsum against the baseline `{data.baseline.label}` "
            "over the test queries.")


def write_markdown(data: ReportData, path: Path) -> str:
    def table(cols: list[str]) -> list[str]:
        head = ["variant", "seeds"] + [header_name(c) for c in cols] + ["p (rsum)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in data.variants:
            cells = [fmt_cell(data.table[v.label].get(c), c) for c in cols]
            cells = [f"**{c}**" if c and data.best.get(col) == v.label else c for c, col in zip(cells, cols)]
            lines.append("| " + " | ".join([f"`{v.label}`", str(len(v.runs))] + cells + [fmt_p(data, v)]) + " |")
        return lines

    md = ["# featvlr report", "", _legend_line(data), "", "## Headline", ""]
    md += table(data.headline + [TRAIN_TIME])
    md += [""] + [f"- {n}" for n in data.notes] + ([""] if data.notes else [])
    if data.changes and data.other is not None:
        md += ["", f"## Where `{data.other.label}` wins and loses against `{data.baseline.label}`", ""]
        for d, parts in data.changes.items():
            for kind, items in parts.items():
                if items:
                    md.append(f"**{DIRECTIONS[d]}, {kind}** (rank: baseline → {data.other.label})")
                    md += [f"- {c.query} — truth: {c.truth} — {fmt_rank(c.base_rank)} → {fmt_rank(c.other_rank)}"
                           for c in items]
                    md.append("")
    md += ["", "## All metrics", ""] + table(data.columns)
    text = "\n".join(md) + "\n"
    path.write_text(text, encoding="utf-8")
    return "\n".join(["# featvlr report", "", _legend_line(data), ""] + table(data.headline + [TRAIN_TIME]))


def write_csv(data: ReportData, path: Path) -> None:
    cols = data.columns + [TRAIN_TIME]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "seeds"] + [f"{m} {s}" for m in cols for s in ("mean", "std")] + ["p_rsum_vs_baseline"])
        for v in data.variants:
            vals: list[Any] = []
            for m in cols:
                x = data.table[v.label].get(m)
                vals += [round(x[0], 10), round(x[1], 10)] if x else ["", ""]
            w.writerow([v.label, len(v.runs)] + vals + [fmt_p(data, v)])


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px 32px;color:#1d2330;max-width:1320px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}p.lead{color:#4a5466;font-size:13px;margin:4px 0 12px}
table{border-collapse:collapse;font-size:13px;margin:4px 0 10px}
th,td{border:1px solid #d5dbe5;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f2f5f9;font-weight:600}td.label,th.label{text-align:left}
td.best{background:#e3f3e5;font-weight:600}span.sd{color:#6b7485;font-size:11px}
table.queries td,table.queries th{white-space:normal;text-align:left;max-width:300px}
table.queries td.num,table.queries th.num{text-align:right;white-space:nowrap}
.pair{display:flex;gap:24px;align-items:flex-start}.pair>div{flex:1 1 0;min-width:0}
td.up{color:#1f7a33}td.down{color:#a32222}
.plots img{max-width:100%;border:1px solid #e3e7ee;margin:6px 0 14px;display:block}
.full{display:inline-block;vertical-align:top;margin-right:18px}ul.notes{font-size:13px;color:#4a5466}
"""


def _html_cell(data: ReportData, v: Variant, col: str) -> str:
    x = data.table[v.label].get(col)
    text = fmt_cell(x, col)
    if " ± " in text:
        mean, sd = text.split(" ± ", 1)
        inner = f"{html.escape(mean)} <span class='sd'>± {html.escape(sd)}</span>"
    else:
        inner = html.escape(text)
    cls = " class='best'" if text and data.best.get(col) == v.label else ""
    return f"<td{cls}>{inner}</td>"


def _html_table(data: ReportData, cols: list[str], table_id: str, with_p: bool, scenario: bool = True) -> str:
    names = [header_name(c) if scenario else scenario_of(c)[1] for c in cols]
    head = "<tr><th class='label'>variant</th><th>seeds</th>" + "".join(
        f"<th>{html.escape(n)}</th>" for n in names) + ("<th>p (rsum)</th>" if with_p else "") + "</tr>"
    rows = []
    for v in data.variants:
        tds = [f"<td class='label'>{html.escape(v.label)}</td>", f"<td>{len(v.runs)}</td>"]
        tds += [_html_cell(data, v, c) for c in cols]
        if with_p:
            tds.append(f"<td>{html.escape(fmt_p(data, v))}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table id='{table_id}'>" + head + "".join(rows) + "</table>"


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _examples_links(data: ReportData, folder: Path) -> str:
    """Links to each variant's examples pages (one per seed), relative to the report."""
    import os

    links = []
    for v in data.variants:
        with_pages = [r for r in v.runs if r.examples is not None]
        for run in with_pages:
            name = v.label + (f" (seed {run.seed})" if len(with_pages) > 1 else "")
            links.append(f"<a href='{html.escape(os.path.relpath(run.examples, folder))}'>{html.escape(name)}</a>")
    return ", ".join(links)


def write_html(data: ReportData, path: Path) -> None:
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>featvlr report</title>",
            f"<style>{CSS}</style></head><body>", "<h1>featvlr report</h1>",
            f"<p class='lead'>{html.escape(_legend_line(data)).replace('`', '')}</p>",
            "<h2>Headline</h2>", _html_table(data, data.headline + [TRAIN_TIME], "headline", True)]
    if data.notes:
        page.append("<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in data.notes) + "</ul>")
    examples = _examples_links(data, path.parent)
    if examples:
        page.append("<p class='lead'>Retrieved examples: " + examples + "</p>")
    if data.changes and data.other is not None:
        page.append(f"<h2 id='changes'>Where {html.escape(data.other.label)} wins and loses against "
                    f"{html.escape(data.baseline.label)}</h2><p class='lead'>Test queries with the largest change of "
                    "rank (1-based, mean over seeds; ordered by the change of reciprocal rank, so moves into the "
                    "first ranks come first).</p>")
        for d, parts in data.changes.items():
            page.append("<div class='pair'>")
            for kind, items in parts.items():
                page.append(f"<div><h3>{html.escape(DIRECTIONS[d])}: {kind}</h3>")
                if not items:
                    page.append("<p class='lead'>none</p></div>")
                    continue
                page.append(f"<table class='queries'><tr><th>query</th><th>ground truth</th>"
                            f"<th class='num'>{html.escape(data.baseline.label)}</th>"
                            f"<th class='num'>{html.escape(data.other.label)}</th></tr>")
                for c in items:
                    cls = "up" if c.change > 0 else "down"
                    page.append(f"<tr><td>{html.escape(_short(c.query, 90))}</td>"
                                f"<td>{html.escape(_short(c.truth, 70))}</td>"
                                f"<td class='num'>{fmt_rank(c.base_rank)}</td>"
                                f"<td class='num {cls}'>{fmt_rank(c.other_rank)}</td></tr>")
                page.append("</table></div>")
            page.append("</div>")
    if data.plots:
        page.append("<h2>Plots</h2><div class='plots'>")
        page += [f"<img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'>" for p in data.plots]
        page.append("</div>")
    page.append("<h2>All metrics</h2>")
    by_scen: dict[str, list[str]] = {}
    for c in sorted(data.columns, key=column_order):
        by_scen.setdefault(scenario_of(c)[0], []).append(c)
    for scen, cols in by_scen.items():
        page.append(f"<div class='full'><h3>{html.escape(scen)}</h3>"
                    + _html_table(data, cols, f"full-{scen}", False, scenario=False) + "</div>")
    page.append("</body></html>")
    path.write_text("\n".join(page), encoding="utf-8")
