"""`featvlr report`: one comparison of many runs (every run x every test metric).

Runs whose configs differ only in ``train.seed`` form one *variant*; each cell is the mean ±
standard deviation (sample, ddof=1) over its seeds, and the best mean per column is marked.
A paired significance test compares a baseline variant with every other one over the test
queries: the per-query contribution to ``rsum`` (``100 * sum_K 1[rank < K]`` for K = 1, 5, 10,
averaged over seeds, i2t and t2i queries each scaled by their count) is compared with a
two-sided paired randomisation (sign-flip) test, 10,000 resamples, seeded. Output:
``report.md``, ``report.csv``, ``metrics_vs_<key>.png`` (metric against a grid value, error
bars over seeds), ``training_curves.png``, and ``report.html`` which puts the tables and
the plots (linked beside it) together, with no scripts or external resources.
"""
from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from featvlr.errors import InputError
from featvlr.records import flatten_numbers
from featvlr.runlog import read_log

LOWER_IS_BETTER = ("medr", "meanr")
IGNORED_KEYS = ("train.seed", "name", "train.progress")
RANK_KS = (1, 5, 10)


@dataclass
class RunRecord:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, float]
    ranks: dict[str, np.ndarray] | None
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.config.get("train", {}).get("seed", 0))


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
        from featvlr.checkpoint import load_checkpoint

        metrics = {k: v for k, v in load_checkpoint(run_dir / "ckpt" / "best.pt")["best_metrics"].items()
                   if isinstance(v, (int, float))}
    ranks_path = run_dir / "eval" / f"{split}_ranks.npz"
    ranks = None
    if ranks_path.exists():
        with np.load(ranks_path) as z:
            ranks = {k: z[k] for k in z.files}
    return RunRecord(run_dir, config, {k: float(v) for k, v in metrics.items()}, ranks, read_log(run_dir))


def variants_of(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Group runs by their config minus the seed; name each group by the keys that differ."""
    flat = [flatten_numbers(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if k not in IGNORED_KEYS and len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
    groups: dict[str, list[RunRecord]] = {}
    for run, f in zip(runs, flat):
        name = "__".join(f"{k}={f.get(k)}" for k in varying) or "base"
        groups.setdefault(name, []).append(run)
    return groups


def rsum_contributions(ranks: dict[str, np.ndarray]) -> np.ndarray:
    """Per-query terms whose sum is the run's rsum (i2t queries then t2i queries)."""
    parts = []
    for key in ("i2t", "t2i"):
        r = np.asarray(ranks[key])
        hits = sum(((r >= 0) & (r < k)).astype(np.float64) for k in RANK_KS)
        parts.append(100.0 * hits / len(r))
    return np.concatenate(parts)


def paired_randomization_test(a: np.ndarray, b: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of ``sum(b - a)`` under random sign flips of the paired differences."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    observed = abs(d.sum())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    count = 0
    chunk = 1000
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        signs = rng.integers(0, 2, size=(n, len(d)), dtype=np.int8) * 2 - 1
        count += int((np.abs(signs @ d) >= observed - 1e-9).sum())
    return (count + 1) / (resamples + 1)


def summarize(groups: dict[str, list[RunRecord]]) -> tuple[list[str], dict[str, dict[str, tuple[float, float, int]]]]:
    """Metric columns and ``{variant: {metric: (mean, std, n)}}``."""
    columns = sorted({m for runs in groups.values() for r in runs for m in r.metrics},
                     key=lambda m: (m != "rsum", m))
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name, runs in groups.items():
        row = {}
        for m in columns:
            vals = np.array([r.metrics[m] for r in runs if m in r.metrics], dtype=np.float64)
            if len(vals):
                row[m] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals))
        table[name] = row
    return columns, table


def best_per_column(columns: list[str], table: dict[str, dict[str, tuple[float, float, int]]]) -> dict[str, str]:
    best = {}
    for m in columns:
        cands = [(v[m][0], name) for name, v in table.items() if m in v]
        if not cands:
            continue
        lower = m.rsplit("/", 1)[-1] in LOWER_IS_BETTER
        best[m] = (min if lower else max)(cands)[1]
    return best


def significance(groups: dict[str, list[RunRecord]], baseline: str | None) -> dict[str, float | None]:
    """p-value of each variant's rsum against the baseline (None where ranks are missing)."""
    if baseline is None or baseline not in groups:
        return {}

    def mean_contrib(runs: list[RunRecord]) -> np.ndarray | None:
        if any(r.ranks is None for r in runs):
            return None
        return np.mean([rsum_contributions(r.ranks) for r in runs], axis=0)

    base = mean_contrib(groups[baseline])
    out: dict[str, float | None] = {}
    for name, runs in groups.items():
        if name == baseline:
            continue
        other = mean_contrib(runs)
        out[name] = None if base is None or other is None or len(other) != len(base) else \
            paired_randomization_test(base, other)
    return out


def _cell(v: tuple[float, float, int]) -> str:
    mean, std, n = v
    digits = 4 if abs(mean) < 1.5 else 2
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _plots(groups: dict[str, list[RunRecord]], table, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    # metric vs each varying key (other keys fixed per line)
    parsed = {name: dict(part.split("=", 1) for part in name.split("__")) if name != "base" else {} for name in groups}
    keys = sorted({k for p in parsed.values() for k in p})
    metric = "rsum" if any("rsum" in row for row in table.values()) else next(iter(next(iter(table.values()))), None)
    for key in keys:
        if metric is None:
            break
        fig, ax = plt.subplots(figsize=(6, 4))
        lines: dict[str, list[tuple[str, float, float]]] = {}
        for name, p in parsed.items():
            if key not in p or metric not in table[name]:
                continue
            rest = "__".join(f"{k}={v}" for k, v in p.items() if k != key) or "all"
            mean, std, _ = table[name][metric]
            lines.setdefault(rest, []).append((p[key], mean, std))
        for rest, pts in lines.items():
            try:
                pts.sort(key=lambda t: float(t[0]))
            except ValueError:
                pts.sort(key=lambda t: t[0])
            xs = [t[0] for t in pts]
            ax.errorbar(range(len(xs)), [t[1] for t in pts], yerr=[t[2] for t in pts], marker="o", capsize=4,
                        label=rest)
            ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(key)
        ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"metrics_vs_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    # training curves: dev selection metric per epoch, mean over seeds
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = False
    for name, runs in groups.items():
        curves = []
        for r in runs:
            train_cfg = r.config.get("train", {})
            key = f"{train_cfg.get('select_split', 'dev')}/{train_cfg.get('select_metric', 'rsum')}"
            ys = [(rec["epoch"], rec[key]) for rec in r.log if rec.get("event") == "epoch" and key in rec]
            if ys:
                curves.append(dict(ys))
        if curves:
            epochs = sorted(set().union(*curves))
            ys = [np.mean([c[e] for c in curves if e in c]) for e in epochs]
            ax.plot(epochs, ys, marker=".", label=name)
            plotted = True
    if plotted:
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev selection metric (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "training_curves.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    plt.close(fig)
    return written


def write_report(run_dirs: list[str | Path], out: str | Path, *, baseline: str | None = None) -> dict[str, Any]:
    """Write report.md, report.csv, plots and report.html for ``run_dirs`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise InputError(out, "no runs to report")
    groups = variants_of(runs)
    if baseline is not None and baseline not in groups:
        # an ablation names its first grid cell; match it against the config-derived names
        matches = [g for g in groups if all(p in g.split("__") for p in baseline.split("__"))]
        baseline = matches[0] if matches else None
    if baseline is None:
        baseline = next(iter(groups))
    columns, table = summarize(groups)
    best = best_per_column(columns, table)
    pvals = significance(groups, baseline)

    header = ["variant", "seeds"] + columns + ["p(rsum vs baseline)"]
    rows = []
    for name, runs_ in groups.items():
        p = "baseline" if name == baseline else ("n/a" if pvals.get(name) is None else f"{pvals[name]:.4f}")
        cells = [(_cell(table[name][m]) if m in table[name] else "") for m in columns]
        rows.append((name, len(runs_), cells, p))

    md = ["# featvlr report", "", f"{len(runs)} runs, {len(groups)} variants; mean ± std over seeds; "
          f"**bold** = best per column; p = paired randomisation test of rsum against `{baseline}` over the "
          "test queries.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, n, cells, p in rows:
        marked = [f"**{c}**" if c and best.get(m) == name else c for m, c in zip(columns, cells)]
        md.append("| " + " | ".join([f"`{name}`", str(n)] + marked + [p]) + " |")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    with (out / "report.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "seeds"] + [f"{m} {s}" for m in columns for s in ("mean", "std")] + ["p_rsum_vs_baseline"])
        for name, n, _, p in rows:
            vals = []
            for m in columns:
                v = table[name].get(m)
                vals += [v[0], v[1]] if v else ["", ""]
            w.writerow([name, n] + vals + [p])

    plots = _plots(groups, table, out)
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>featvlr report</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
            ".best{font-weight:bold;background:#e8f4e8}img{max-width:640px;margin:1em 0}</style></head><body>",
            "<h1>featvlr report</h1>",
            f"<p>{len(runs)} runs, {len(groups)} variants; mean ± std over seeds; best per column highlighted; "
            f"p = paired randomisation test of rsum against <code>{html.escape(baseline)}</code>.</p>",
            "<table id='results'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for name, n, cells, p in rows:
        tds = [f"<td>{html.escape(name)}</td>", f"<td>{n}</td>"]
        tds += [f"<td class='best'>{html.escape(c)}</td>" if c and best.get(m) == name else f"<td>{html.escape(c)}</td>"
                for m, c in zip(columns, cells)]
        tds.append(f"<td>{html.escape(p)}</td>")
        page.append("<tr>" + "".join(tds) + "</tr>")
    page.append("</table>")
    for path in plots:
        page.append(f"<h2>{html.escape(path.stem)}</h2><img src='{html.escape(path.name)}' alt='{html.escape(path.stem)}'>")
    page.append("</body></html>")
    (out / "report.html").write_text("\n".join(page), encoding="utf-8")
    return {"markdown": out / "report.md", "csv": out / "report.csv", "html": out / "report.html",
            "plots": plots, "baseline": baseline, "variants": list(groups), "p_values": pvals,
            "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()}}


__all__ = ["load_run", "paired_randomization_test", "rsum_contributions", "variants_of", "write_report"]
