"""The numbers of a report: metric columns in reading order, the headline columns, mean ±
standard deviation over seeds, the best variant per column, and the paired significance test.

Each cell is the mean ± standard deviation (sample, ddof=1) over a variant's seeds. A paired
significance test compares a baseline variant with every other one over the test queries:
the per-query contribution to ``rsum`` (``100 * sum_K 1[rank < K]`` for K = 1, 5, 10,
averaged over seeds, i2t and t2i queries each scaled by their count) is compared with a
two-sided paired randomisation (sign-flip) test, 10,000 resamples, seeded.
"""
from __future__ import annotations

import re

import numpy as np

from featvlr.report.labels import Variant

LOWER_IS_BETTER = ("medr", "meanr")
RANK_KS = (1, 5, 10)
TRAIN_TIME = "train time (s)"
SCENARIO_ORDER = ("summary", "i2t", "t2i", "i2i", "t2t", "i2it", "t2it", "composed")
UNIMODAL_AND_MIXED = ("i2i", "t2t", "i2it", "t2it")
NDCG_HEADLINE = ("ndcg_lin@10", "ndcg_exp@25")
COMPOSED_HEADLINE = ("recall_avg", "average_recall", "recall_mean", "R@10", "R@1")

Table = dict[str, dict[str, tuple[float, float, int]]]


def scenario_of(column: str) -> tuple[str, str]:
    """``"i2t_1k/R@1"`` -> ``("i2t_1k", "R@1")``; ``"rsum"`` -> ``("summary", "rsum")``."""
    scen, sep, metric = column.partition("/")
    return (scen, metric) if sep else ("summary", column)


def _metric_order(metric: str) -> tuple:
    m = re.fullmatch(r"(R|Rsubset|ndcg_lin|ndcg_exp)@(\d+)", metric)
    if m:
        return ({"R": 0, "Rsubset": 1, "ndcg_lin": 4, "ndcg_exp": 5}[m.group(1)], int(m.group(2)), "")
    fixed = {"rsum": 0, "r_mean": 1, "medr": 2, "meanr": 3}
    base = metric.split("_1k")[0]
    if base in fixed:
        return (fixed[base], 0, metric)
    cat = re.fullmatch(r"(.+)_R@(\d+)", metric)  # FashionIQ categories after the means
    if cat:
        return (7, int(cat.group(2)), cat.group(1))
    return (6, 0, metric)


def column_order(column: str) -> tuple:
    """Sort key of a metric column: scenarios in the protocol's order, then R@1, R@5, R@10
    (numerically), medr, meanr, NDCG by K."""
    scen, metric = scenario_of(column)
    base = scen.split("_")[0]
    idx = SCENARIO_ORDER.index(base) if base in SCENARIO_ORDER else len(SCENARIO_ORDER)
    return (idx, scen, _metric_order(metric))


def headline_columns(columns: list[str]) -> list[str]:
    """rsum, the R@1s, one NDCG per uni-modal and mixed scenario, the composed headline."""
    out = [c for c in ("rsum", "i2t/R@1", "t2i/R@1") if c in columns]
    for scen in UNIMODAL_AND_MIXED:
        pick = [f"{scen}/{m}" for m in NDCG_HEADLINE if f"{scen}/{m}" in columns]
        if not pick:
            pick = sorted((c for c in columns if c.startswith(f"{scen}/ndcg")), key=column_order)
        out += pick[:1]
    for m in COMPOSED_HEADLINE:
        if f"composed/{m}" in columns:
            out.append(f"composed/{m}")
            break
    return out or columns[:6]


def summarize(variants: list[Variant]) -> tuple[list[str], Table]:
    """Metric columns in reading order and ``{label: {metric: (mean, std, n)}}``; the training
    time (seconds in epochs, from the log) is the column :data:`TRAIN_TIME`."""
    columns = sorted({m for v in variants for r in v.runs for m in r.metrics}, key=column_order)
    table: Table = {}
    for v in variants:
        row = {}
        for m in columns:
            row.update(_stat(m, [r.metrics[m] for r in v.runs if m in r.metrics]))
        row.update(_stat(TRAIN_TIME, [r.train_seconds for r in v.runs if r.train_seconds is not None]))
        table[v.label] = row
    return columns, table


def _stat(name: str, values: list[float]) -> dict[str, tuple[float, float, int]]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {name: (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a))}


def best_per_column(columns: list[str], table: Table) -> dict[str, str]:
    """The best label per metric column; none when fewer than two variants have the column."""
    best = {}
    for m in columns:
        cands = [(v[m][0], name) for name, v in table.items() if m in v]
        if len(cands) < 2:
            continue
        lower = m.rsplit("/", 1)[-1].split("_1k")[0] in LOWER_IS_BETTER
        value = (min if lower else max)(c[0] for c in cands)
        if sum(c[0] == value for c in cands) < len(cands):  # all tied: nothing is best
            best[m] = next(name for v, name in cands if v == value)
    return best


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


def significance(variants: list[Variant], baseline: Variant | None) -> dict[str, float | None]:
    """p-value of each variant's rsum against the baseline (None where ranks are missing)."""
    if baseline is None:
        return {}

    def mean_contrib(v: Variant) -> np.ndarray | None:
        if any(r.ranks is None for r in v.runs):
            return None
        return np.mean([rsum_contributions(r.ranks) for r in v.runs], axis=0)

    base = mean_contrib(baseline)
    out: dict[str, float | None] = {}
    for v in variants:
        if v is baseline:
            continue
        other = mean_contrib(v)
        out[v.label] = None if base is None or other is None or len(other) != len(base) else \
            paired_randomization_test(base, other)
    return out


def best_variant(variants: list[Variant], table: Table, baseline: Variant | None) -> Variant | None:
    """The variant with the highest mean rsum other than the baseline (None if there is none)."""
    others = [v for v in variants if v is not baseline and "rsum" in table.get(v.label, {})]
    return max(others, key=lambda v: table[v.label]["rsum"][0]) if others else None
