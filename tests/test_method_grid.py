"""A grid over ``method`` trains each method with its own recipe for the dataset, and a term
that never acts in a run is a warning in its log and in the report."""
from __future__ import annotations

from pathlib import Path

from synthetic import write_synthetic_cache, write_synthetic_config

from featvlr.config import load_config
from featvlr.demo import DEMO_DEFAULTS
from featvlr.demo.captions import CAPTIONS_PER_IMAGE
from featvlr.tuning.ablate import parse_grid, plan_runs, run_ablation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_a_method_grid_from_demo_vse_gives_every_method_its_demo_recipe(tmp_path):
    methods = ["vse", "hrem", "covlr", "rvlr"]
    runs = plan_runs(CONFIGS / "demo_vse.yaml", parse_grid([f"method={','.join(methods)}"]), [0], tmp_path)
    by_method = {r.config.method: r.config for r in runs}
    assert sorted(by_method) == sorted(methods)
    for method in methods[1:]:
        own = load_config(CONFIGS / f"demo_{method}.yaml", [])
        assert by_method[method].loss == own.loss and by_method[method].model == own.model, method
    # HREM's graph switches on inside the demo run (the Flickr30K default, 8000 steps, never would)
    cfg = by_method["hrem"]
    steps = -(-DEMO_DEFAULTS["n_train"] * CAPTIONS_PER_IMAGE // cfg.train.batch_size) * cfg.train.epochs
    assert cfg.loss.graph_warmup_steps < steps
    assert load_config(None, ["method=hrem"]).loss.graph_warmup_steps >= steps


def test_a_term_that_never_acts_is_a_warning_in_the_report(tmp_path):
    cache = write_synthetic_cache(tmp_path / "syn.h5", n_images=(64, 16, 16))
    write_synthetic_config(tmp_path / "syn_vse.yaml", cache)
    # this dataset's HREM recipe switches its graph on after 1000 steps; the run has 10
    write_synthetic_config(tmp_path / "syn_hrem.yaml", cache, method="hrem", loss={"graph_warmup_steps": 1000})
    result = run_ablation(tmp_path / "syn_vse.yaml", ["method=vse,hrem"], [0], tmp_path / "ab", jobs=1)
    text = Path(result["report"]["markdown"]).read_text()
    assert "Warning, hrem (seed 0): graph_on was zero at every one of the run's 10 steps" in text
    vse_notes = [line for line in text.splitlines() if "Warning, " in line and "hrem" not in line]
    assert not vse_notes, vse_notes


def test_the_report_compares_each_method_with_the_strongest_vse_on_dev(tmp_path):
    from featvlr.report.write import write_report
    from featvlr.training.trainer import train

    cache = write_synthetic_cache(tmp_path / "syn.h5", n_images=(64, 16, 16))
    common = [f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=16", "train.epochs=2",
              "train.batch_size=32", "train.progress=false", "eval.dev_scenarios=[i2t, t2i]",
              "eval.scenarios=[i2t, t2i]"]
    runs = {}
    for name, extra in {"weak": ["train.lr=1e-6"], "strong": ["train.lr=2e-3"], "hrem": ["method=hrem"]}.items():
        for seed in (0, 1):
            runs[name, seed] = train(load_config(None, [*common, *extra, f"train.seed={seed}"]),
                                     tmp_path / f"{name}{seed}")
    rep = write_report([r.run_dir for r in runs.values()], tmp_path / "report", baseline=str(tmp_path / "weak0"))
    text = Path(rep["markdown"]).read_text()
    strong_label = [v for v in rep["variants"] if "2e-3" in v or "0.002" in v][0]
    assert f"Strongest vse on dev: {strong_label}" in text
    diffs = [runs["hrem", s].test_metrics["metrics"]["rsum"] - runs["strong", s].test_metrics["metrics"]["rsum"]
             for s in (0, 1)]
    line = [x for x in text.splitlines() if x.startswith("- hrem") and f"− {strong_label}:" in x][0]
    assert f"{sum(diffs) / 2:+.2f}" in line and "over 2 seed(s)" in line
