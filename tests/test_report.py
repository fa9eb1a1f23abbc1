"""`featvlr report`: labels, headline and column order, best marks, plots only for grid keys,
wins and losses by query, and the HTML page of a small ablation."""
from __future__ import annotations

import json
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from synthetic import write_synthetic_cache

from featvlr.config import config_to_dict
from featvlr.report import group_variants, load_run, write_report
from featvlr.report.stats import column_order, headline_columns
from featvlr.tuning.ablate import parse_grid, plan_runs, run_ablation

METRICS = {"i2t/R@1": 10.0, "i2t/R@10": 50.0, "i2t/R@5": 30.0, "t2i/R@1": 8.0, "t2i/R@5": 25.0,
           "t2i/R@10": 40.0, "rsum": 163.0, "i2t/medr": 11.0, "i2i/ndcg_lin@20": 0.6, "i2i/ndcg_lin@10": 0.5,
           "t2t/ndcg_lin@10": 0.55, "i2it/ndcg_lin@10": 0.4, "t2it/ndcg_lin@10": 0.45}


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rep")
    cache = write_synthetic_cache(root / "syn.h5", n_images=(64, 16, 16))
    with h5py.File(cache, "a") as f:  # raw captions for the query-level comparison
        f.create_dataset("texts/test/raw", data=np.array([f"caption {i} of image {i // 5}" for i in range(80)],
                                                         dtype=h5py.string_dtype()))
    cfg = {"method": "vse", "data": {"cache": str(cache), "dataset": "synthetic"},
           "model": {"embed_dim": 16, "pooling": "mean"}, "loss": {"margin": 0.2},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "lr": 5e-4},
           "eval": {"scenarios": ["i2t", "t2i", "i2i", "t2t"], "dev_scenarios": ["i2t", "t2i"]}}
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fake_run(folder: Path, config: dict, metrics: dict[str, float], ranks: dict | None = None) -> Path:
    (folder / "eval").mkdir(parents=True)
    config = {**config, "data": {**config.get("data", {}), "test_split": "test"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "eval" / "test.json").write_text(json.dumps({"metrics": metrics}))
    if ranks is not None:
        np.savez(folder / "eval" / "test_ranks.npz", **ranks)
    return folder


def planned_runs(base_config: Path, tmp_path: Path, grid: list[str], seeds=(0, 1)) -> list[Path]:
    """Run folders with the configs an ablation would resolve (no training)."""
    out = []
    for i, run in enumerate(plan_runs(base_config, parse_grid(grid), list(seeds), tmp_path / "plan")):
        out.append(fake_run(run.run_dir, config_to_dict(run.config), {k: v + i for k, v in METRICS.items()}))
    return out


def test_method_grid_labels_are_method_names(base_config, tmp_path):
    runs = [load_run(p) for p in planned_runs(base_config, tmp_path, ["method=vse,hrem,covlr"])]
    variants = group_variants(runs)
    assert [v.label for v in variants] == ["vse", "hrem", "covlr"]
    assert [len(v.runs) for v in variants] == [2, 2, 2]


def test_label_shows_only_what_a_user_changed(base_config, tmp_path):
    cfgs = [(m, lr) for m, lr in (("vse", 5e-4), ("hrem", 5e-4), ("vse", 3e-4))]
    runs = []
    for i, (method, lr) in enumerate(cfgs):
        plan = plan_runs(base_config, parse_grid([f"method={method}", f"train.lr={lr}"]), [0], tmp_path / f"p{i}")[0]
        runs.append(load_run(fake_run(tmp_path / f"r{i}", config_to_dict(plan.config), METRICS)))
    assert [v.label for v in group_variants(runs)] == ["vse", "hrem", "vse lr=3e-4"]
    assert [v.label for v in group_variants(runs, group_by="method")] == ["vse", "hrem"]
    named = group_variants(runs, labels={str(tmp_path / "r2"): "slow vse"})
    assert [v.label for v in named] == ["vse", "hrem", "slow vse"]


def test_columns_in_reading_order_and_headline():
    cols = sorted(METRICS, key=column_order)
    assert cols[:4] == ["rsum", "i2t/R@1", "i2t/R@5", "i2t/R@10"]
    assert cols.index("i2i/ndcg_lin@10") < cols.index("i2i/ndcg_lin@20")
    assert headline_columns(cols) == ["rsum", "i2t/R@1", "t2i/R@1", "i2i/ndcg_lin@10", "t2t/ndcg_lin@10",
                                      "i2it/ndcg_lin@10", "t2it/ndcg_lin@10"]
    assert headline_columns(cols + ["composed/R@1", "composed/recall_avg"])[-1] == "composed/recall_avg"


def test_one_variant_marks_nothing_best_and_plots_no_keys(tmp_path):
    run = fake_run(tmp_path / "r", {"method": "vse", "train": {"seed": 0}}, METRICS)
    rep = write_report([run], tmp_path / "rep", vs=["method"])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "class='best'" not in html and "**" not in (tmp_path / "rep" / "report.md").read_text()
    assert not list((tmp_path / "rep").glob("metrics_vs_*.png")) and rep["variants"] == ["vse"]


def test_wins_and_losses_by_query(tmp_path):
    base = {"i2t": np.array([0, 5, 9, 2]), "t2i": np.array([0, 1, 30, 4, 2, 0, 7, 9])}
    better = {"i2t": np.array([0, 0, 20, 2]), "t2i": np.array([0, 1, 0, 4, 2, 0, 7, 19])}
    runs = [fake_run(tmp_path / "a", {"method": "vse", "loss": {"margin": 0.2}}, METRICS, base),
            fake_run(tmp_path / "b", {"method": "vse", "loss": {"margin": 0.1}}, {**METRICS, "rsum": 170.0}, better)]
    write_report(runs, tmp_path / "rep", top_queries=2)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Where `vse margin=0.1` wins and loses against `vse margin=0.2`" in md
    assert "caption #2 — truth: (cache not found) — 31 → 1" in md  # t2i win: rank 31 -> 1
    assert "image #2 — truth: captions of image #2 — 10 → 21" in md  # i2t loss


class Page(HTMLParser):
    """Tables (id -> rows of cell texts) and images of a report page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self._table = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or f"t{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(attrs["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def test_report_html_of_a_small_ablation(base_config, tmp_path, capsys):
    out = tmp_path / "abl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib layout warnings, nothing else either
        result = run_ablation(base_config, ["method=vse,hrem"], [0, 1], out, jobs=1)
    assert {r["status"] for r in result["runs"]} == {"trained"}
    assert yaml.safe_load((out / "ablation.yaml").read_text())["grid_keys"] == ["method"]
    rep = out / "report"
    page = Page()
    page.feed((rep / "report.html").read_text())
    head = page.tables["headline"]
    assert head[0][:3] == ["variant", "seeds", "rsum"] and "p (rsum)" in head[0] and "train time" in head[0]
    labels = [row[0] for row in head[1:]]
    assert labels == ["vse", "hrem"] and all(len(label) < 40 for label in labels)
    assert head[1][-1] == "baseline" and head[2][-1] not in ("", "n/a")
    full = page.tables["full-i2t"][0]
    assert full.index("R@1") < full.index("R@5") < full.index("R@10")
    assert page.imgs and all((rep / src).exists() for src in page.imgs)
    assert sorted(page.imgs) == ["metrics_vs_method.png", "training_curves.png"]
    assert "wins" in (rep / "report.html").read_text() and "caption " in (rep / "report.html").read_text()
    # the command line reads the ablation folder: same labels and plots, one headline table printed
    from conftest import run_cli_main

    code, text, err = run_cli_main(["report", out, "--out", tmp_path / "rep2"], capsys)
    assert code == 0, err
    assert "| `vse` | 2 |" in text and "| `hrem` | 2 |" in text and "All metrics" not in text
    assert sorted(p.name for p in (tmp_path / "rep2").glob("*.png")) == ["metrics_vs_method.png",
                                                                         "training_curves.png"]
    # a run with an examples page (featvlr eval RUN --examples N) is linked from the report
    first = Path(result["runs"][0]["run_dir"])
    (first / "eval" / "examples.html").write_text("<html></html>")
    code, _, err = run_cli_main(["report", out, "--out", tmp_path / "rep3"], capsys)
    assert code == 0, err
    links = re.findall(r"href='([^']+)'", (tmp_path / "rep3" / "report.html").read_text())
    assert links and all((tmp_path / "rep3" / link).resolve() == (first / "eval" / "examples.html").resolve()
                         for link in links)


@pytest.mark.parametrize("epochs", [1, 3])
def test_training_curves_have_integer_epoch_ticks(tmp_path, monkeypatch, epochs):
    """A 1-epoch run's curve is one point: its x axis still shows whole epochs only."""
    import matplotlib.figure

    from featvlr.report.labels import Variant
    from featvlr.report.plots import training_curves
    from featvlr.report.runs import RunRecord

    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    log = [{"event": "epoch", "epoch": e, "dev/rsum": 100.0 + e} for e in range(1, epochs + 1)]
    run = RunRecord(tmp_path / "r", {"train": {"select_split": "dev", "select_metric": "rsum"}}, {}, None, log)
    assert training_curves([Variant("vse", [run])], tmp_path) == tmp_path / "training_curves.png"
    (ax,) = figures[0].axes
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert set(range(1, epochs + 1)) <= {int(t) for t in ticks}
