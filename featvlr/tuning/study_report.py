"""The report of a tuning study (`featvlr report <tune folder>`): the best trials, every trial
with its run folder, and Optuna's own figures (matplotlib backend): optimisation history,
parameter importances and the intermediate values the pruner saw.

Files in ``<tune folder>/report``: ``study.md``, ``study.csv``, ``study.html`` and the PNGs
it links. The study is read from the storage that ``tune.yaml`` records (or ``storage``).
"""
from __future__ import annotations

import csv
import html
import io
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from featvlr.core.errors import InputError
from featvlr.core.fileio import atomic_write_text

TOP = 10


def is_tune_folder(path: str | Path) -> bool:
    return (Path(path) / "tune.yaml").exists()


def load_study(folder: str | Path, storage: str | None = None):
    """The study a tuning folder records in ``tune.yaml``."""
    folder = Path(folder)
    meta_path = folder / "tune.yaml"
    if not meta_path.exists():
        raise InputError(folder, "not a tuning folder (no tune.yaml)")
    meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    import optuna

    from featvlr.tuning.storage import open_storage

    store = open_storage(storage or meta["storage"])
    try:
        return optuna.load_study(study_name=meta["study"], storage=store), meta
    except KeyError:
        raise InputError(meta_path, f"the storage holds no study {meta['study']!r}") from None


def _figure(name: str, draw, out: Path) -> Path | None:
    """Save what one of Optuna's matplotlib functions draws; None when it has nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = draw()
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this figure
        plt.close("all")
        return None
    fig = ax.flatten()[0].figure if hasattr(ax, "flatten") else ax.figure
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
    return path


def _rows(study, folder: Path) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        value = t.value if t.value is not None else t.user_attrs.get("best_value")
        run = t.user_attrs.get("run_dir")
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": value,
                     "epochs": t.last_step if t.last_step is not None else "", "params": dict(t.params),
                     "run_dir": run, "link": os.path.relpath(run, folder) if run else None,
                     "seconds": t.duration.total_seconds() if t.duration else None,
                     "retry_of": t.system_attrs.get("failed_trial"), "error": t.user_attrs.get("error", "")})
    return rows


def write_study_report(folder: str | Path, out: str | Path | None = None, *, study=None,
                       storage: str | None = None) -> dict[str, Any]:
    """Write the study's report; returns the paths, the best trial and the ``headline`` text."""
    from featvlr.tuning.progress import fmt_params

    folder = Path(folder)
    meta = yaml.safe_load((folder / "tune.yaml").read_text(encoding="utf-8")) if is_tune_folder(folder) else {}
    if study is None:
        study, meta = load_study(folder, storage)
    out = Path(out) if out is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(study, out)
    metric = meta.get("metric", "value")
    done = sorted((r for r in rows if r["state"] == "complete" and r["value"] is not None),
                  key=lambda r: -r["value"])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    best = done[0] if done else None
    headline = (f"study {study.study_name}: {len(rows)} trials ({summary}); "
                + (f"best trial {best['trial']}: {metric} {best['value']:.2f} with {fmt_params(best['params'])}"
                   if best else "no complete trial yet"))

    from optuna.visualization import matplotlib as ovm

    plots = [p for p in (
        _figure("optimization_history", lambda: ovm.plot_optimization_history(study, target_name=metric), out),
        _figure("param_importances", lambda: ovm.plot_param_importances(study), out)
        if len(done) >= 2 and study.trials[0].params else None,
        _figure("intermediate_values", lambda: ovm.plot_intermediate_values(study), out)
        if any(t.intermediate_values for t in study.trials) else None,
        _figure("slice", lambda: ovm.plot_slice(study, target_name=metric), out) if done else None,
    ) if p is not None]

    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    md = [f"# Study `{study.study_name}`", "", headline, "",
          f"Space: {', '.join(f'`{k}={v}`' for k, v in (meta.get('space') or {}).items())}; "
          f"pruner {meta.get('pruner', '?')}; sampler TPE, seed {meta.get('seed', '?')}; storage "
          f"`{_mask(meta.get('storage', ''))}`.", "", f"## Best trials (top {TOP}, {metric})", "",
          "| trial | " + metric + " | " + " | ".join(keys) + " | run folder |",
          "|---|---|" + "---|" * len(keys) + "---|"]
    for r in done[:TOP]:
        md.append(f"| {r['trial']} | {r['value']:.2f} | " + " | ".join(_cell(r["params"].get(k)) for k in keys)
                  + f" | {r['link'] or ''} |")
    md += ["", "Figures: " + ", ".join(p.name for p in plots), ""]
    atomic_write_text(out / "study.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", metric, "epochs", "seconds", *keys, "run_dir", "retry_of", "error"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], "" if r["value"] is None else f"{r['value']:.4f}", r["epochs"],
                         "" if r["seconds"] is None else f"{r['seconds']:.1f}",
                         *[_cell(r["params"].get(k)) for k in keys], r["run_dir"] or "",
                         "" if r["retry_of"] is None else r["retry_of"], r["error"]])
    atomic_write_text(out / "study.csv", buf.getvalue())
    _write_html(out / "study.html", headline, metric, keys, done[:TOP], rows, plots)
    return {"markdown": out / "study.md", "csv": out / "study.csv", "html": out / "study.html", "plots": plots,
            "headline": headline, "best": best, "counts": counts}


def _mask(url: str) -> str:
    from featvlr.tuning.storage import masked

    return masked(url)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
       "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
       "td.l{text-align:left}tr.pruned td{color:#777}tr.fail td{color:#a00}img{max-width:48%;margin:4px}")


def _write_html(path: Path, headline: str, metric: str, keys: list[str], best: list[dict], rows: list[dict],
                plots: list[Path]) -> None:
    def table(items: list[dict], tid: str) -> str:
        head = ("<tr><th>trial</th><th>state</th><th>" + html.escape(metric) + "</th><th>epochs</th><th>s</th>"
                + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "<th>run folder</th></tr>")
        body = []
        for r in items:
            link = (f"<a href='{html.escape(r['link'])}'>{html.escape(Path(r['link']).name)}</a>"
                    if r["link"] else "")
            value = "" if r["value"] is None else f"{r['value']:.2f}"
            secs = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
            body.append(f"<tr class='{r['state']}'><td>{r['trial']}</td><td class='l'>{r['state']}</td>"
                        f"<td>{value}</td><td>{r['epochs']}</td><td>{secs}</td>"
                        + "".join(f"<td>{html.escape(_cell(r['params'].get(k)))}</td>" for k in keys)
                        + f"<td class='l'>{link}</td></tr>")
        return f"<table id='{tid}'>{head}{''.join(body)}</table>"

    page = ["<!doctype html><html><head><meta charset='utf-8'><title>featvlr study</title>",
            f"<style>{CSS}</style></head><body><h1>featvlr study</h1>", f"<p>{html.escape(headline)}</p>",
            f"<h2>Best trials ({html.escape(metric)})</h2>", table(best, "best"),
            "<h2>Figures (Optuna)</h2>", "".join(f"<img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'>"
                                                 for p in plots),
            "<h2>Every trial</h2>", table(rows, "trials"), "</body></html>"]
    atomic_write_text(path, "\n".join(page))


__all__ = ["is_tune_folder", "load_study", "write_study_report"]
