"""`featvlr ablate` grids, resumption, and the report's statistics and HTML."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from synthetic import write_synthetic_cache, write_synthetic_config

from featvlr.core.errors import ConfigError
from featvlr.report import paired_randomization_test, rsum_contributions, write_report
from featvlr.tuning.ablate import parse_grid, plan_runs, run_ablation


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("abl")
    cache = write_synthetic_cache(root / "syn.h5", n_images=(64, 16, 16))
    return write_synthetic_config(root / "base.yaml", cache)


def test_grid_expands_as_stated(base_config, tmp_path):
    grid = parse_grid(["loss.margin=0.1,0.2", "method=vse", "train.lr_steps=[1,2],[3]"])
    assert grid == {"loss.margin": [0.1, 0.2], "method": ["vse"], "train.lr_steps": [[1, 2], [3]]}
    runs = plan_runs(base_config, grid, [0, 1, 2], tmp_path)
    assert len(runs) == 2 * 1 * 2 * 3
    cells = {(r.values["loss.margin"], json.dumps(r.values["train.lr_steps"]), r.seed) for r in runs}
    assert len(cells) == 12
    assert all(r.config.loss.margin == r.values["loss.margin"] and r.config.train.seed == r.seed for r in runs)
    assert runs[0].run_dir.parent.name == "loss.margin=0.1__method=vse__train.lr_steps=_1,2_"


@pytest.mark.parametrize("grid, needle", [(["loss.margn=0.1,0.2"], "did you mean 'margin'"),
                                          (["train.epochs=1,two"], "expected an integer"),
                                          (["method=vse,nosuch"], "unknown method")])
def test_bad_grid_is_refused_before_anything_runs(base_config, tmp_path, grid, needle):
    with pytest.raises(ConfigError, match=needle):
        run_ablation(base_config, grid, [0], tmp_path / "abl")
    assert not (tmp_path / "abl").exists()


def test_interrupted_ablation_resumes_without_redoing(base_config, tmp_path):
    out = tmp_path / "abl"
    first = run_ablation(base_config, ["loss.margin=0.1,0.2"], [0, 1], out, jobs=1, report=False,
                         extra=["train.epochs=1"])
    assert sorted(r["status"] for r in first["runs"]) == ["trained"] * 4
    # interrupt one run: drop its results so it looks unfinished, keep its checkpoint
    victim = out / "loss.margin=0.1" / "seed1"
    (victim / "eval" / "test.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/eval/test.json")}
    second = run_ablation(base_config, ["loss.margin=0.1,0.2"], [0, 1], out, jobs=1, extra=["train.epochs=1"])
    statuses = {Path(r["run_dir"]).relative_to(out).as_posix(): r["status"] for r in second["runs"]}
    assert statuses.pop("loss.margin=0.1/seed1") == "resumed"
    assert set(statuses.values()) == {"skipped"}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (out / "report" / "report.html").exists()


def _fake_run(root: Path, margin: float, seed: int, rsum: float, ranks: dict[str, np.ndarray]) -> Path:
    run = root / f"m{margin}_s{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "vse", "loss": {"margin": margin},
                                                     "train": {"seed": seed}, "data": {"test_split": "test"}}))
    (run / "eval" / "test.json").write_text(json.dumps({"metrics": {"rsum": rsum, "i2t/medr": 3.0 - margin}}))
    np.savez(run / "eval" / "test_ranks.npz", **ranks)
    (run / "log.jsonl").write_text("".join(json.dumps({"event": "epoch", "epoch": e, "dev/rsum": rsum - 3 + e}) + "\n"
                                           for e in (1, 2, 3)))
    return run


def test_report_statistics_on_hand_made_results(tmp_path):
    good = {"i2t": np.zeros(40, dtype=np.int64), "t2i": np.zeros(200, dtype=np.int64)}
    bad = {"i2t": np.full(40, 20), "t2i": np.full(200, 20)}
    runs = [_fake_run(tmp_path, 0.1, 0, 100.0, bad), _fake_run(tmp_path, 0.1, 1, 110.0, bad),
            _fake_run(tmp_path, 0.2, 0, 300.0, good), _fake_run(tmp_path, 0.2, 1, 320.0, good)]
    rep = write_report(runs, tmp_path / "rep", baseline="loss.margin=0.1")  # an ablation cell's name
    table = rep["table"]
    assert rep["variants"] == ["vse margin=0.1", "vse margin=0.2"] and rep["baseline"] == "vse margin=0.1"
    assert table["vse margin=0.1"]["rsum"][:2] == pytest.approx([105.0, np.std([100, 110], ddof=1)])
    assert table["vse margin=0.2"]["rsum"][:2] == pytest.approx([310.0, np.std([300, 320], ddof=1)])
    assert rep["p_values"]["vse margin=0.2"] < 0.01
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**310.00 ± 14.14**" in md  # best rsum marked
    assert "**2.80" in md  # medr: lower is better
    csv_rows = (tmp_path / "rep" / "report.csv").read_text().splitlines()
    assert len(csv_rows) == 3

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.imgs, self.table = 0, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.table = dict(attrs).get("id")
            self.rows += tag == "tr" and self.table == "headline"
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])

    page = Page()
    page.feed((tmp_path / "rep" / "report.html").read_text())
    assert page.rows == 3  # header + 2 variants
    assert page.imgs and all((tmp_path / "rep" / src).exists() for src in page.imgs)
    assert "training_curves.png" in page.imgs


def test_rsum_contributions_and_randomization_test():
    ranks = {"i2t": np.array([0, 3, 7, 50]), "t2i": np.array([0, 0, 9, 10, 4, 1, 2, 100])}
    contrib = rsum_contributions(ranks)
    expect = sum(100 * np.mean(ranks[d][:, None] < np.array([1, 5, 10]), axis=0).sum() for d in ("i2t", "t2i"))
    assert contrib.sum() == pytest.approx(expect)
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert paired_randomization_test(a, a) == 1.0
    assert paired_randomization_test(a, a + 1.0) < 0.001
    assert paired_randomization_test(a, a + rng.normal(scale=0.01, size=200)) > 0.01


def test_method_grid_keeps_shared_options_and_drops_foreign_ones(base_config, tmp_path):
    cfg = yaml.safe_load(base_config.read_text())
    cfg["model"].update({"pooling": "mean"})  # a vse-only option
    cfg["loss"] = {"margin": 0.3}
    path = tmp_path / "vse_base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = plan_runs(path, parse_grid(["method=vse,hrem"]), [0], tmp_path)
    vse = [r for r in runs if r.config.method == "vse"][0]
    hrem = [r for r in runs if r.config.method == "hrem"][0]
    assert vse.config.model.pooling == "mean"
    assert hrem.config.model.embed_dim == 16 and hrem.config.loss.margin == 0.3
    with pytest.raises(ConfigError, match="pooling"):
        plan_runs(base_config, parse_grid(["method=hrem", "model.pooling=gpo"]), [0], tmp_path)
