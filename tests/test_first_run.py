"""What a new user meets on a first run: each bad input is one line naming what was typed,
exit status 2, and nothing left half-written."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# -- a malformed config section ------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, override, first_line", [
    (None, "train=5", "featvlr: error: --set train: expected a mapping of keys, got 5"),
    ("train: 5\n", None, "train: expected a mapping of keys, got 5"),
    ("data: [1, 2]\n", None, "data: expected a mapping of keys, got [1, 2]"),
    ("model: fast\n", None, "model: expected a mapping of keys, got 'fast'"),
])
def test_malformed_config_section_is_one_line(cli, tmp_path, yaml_text, override, first_line):
    config = REPO / "configs" / "demo_vse.yaml"
    if yaml_text is not None:
        config = tmp_path / "bad.yaml"
        config.write_text(yaml_text)
    args = ["train", "--config", config, "--out", tmp_path / "run"]
    if override:
        args += ["--set", override]
    code, out, err = cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and first_line in lines[0], err
    if yaml_text is not None:
        assert lines[0].startswith(f"featvlr: error: {config}: ")
    assert not (tmp_path / "run").exists()


# -- featvlr demo checks its options before any work -------------------------------------

@pytest.mark.parametrize("args, first_line", [
    (["--epochs", "0"], "featvlr: error: --epochs: expected >= 1, got 0"),
    (["--seed", "-1"], "featvlr: error: --seed: expected >= 0, got -1"),
    (["--set", "train.epochs=0"], "featvlr: error: --set train.epochs: expected >= 1, got 0"),
    (["--set", "train.lr=abc"], "featvlr: error: --set train.lr: expected a number, got 'abc'"),
    (["--set", "train=5"], "featvlr: error: --set train: expected a mapping of keys"),
    (["--data-only", "--seed", "-1"], "featvlr: error: --seed: expected >= 0, got -1"),
])
def test_demo_checks_options_before_any_work(cli, tmp_path, args, first_line):
    out = tmp_path / "X"
    code, stdout, err = cli("demo", "--out", out, "--no-progress", *args)
    assert code == 2
    assert err.splitlines()[0].startswith(first_line), err
    assert len(err.strip().splitlines()) == 1
    assert stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("args, typed", [
    (["--epochs", "4"], "--epochs 4"),
    (["--set", "train.epochs=3"], "--set train.epochs=3"),
    (["--epochs", "6", "--set", "train.epochs=5"], "--set train.epochs=5"),  # the --set value is the one used
])
def test_demo_with_fewer_epochs_than_done_names_the_option_before_announcing_work(cli, tmp_path, args, typed):
    """After a finished 8-epoch demo, asking for fewer epochs is refused under the option typed,
    before any "resuming" line and before the dataset is built."""
    from featvlr.app.demo import demo_config
    from featvlr.config import save_config
    from featvlr.core.checkpoint import save_checkpoint

    out = tmp_path / "X"
    run = out / "runs" / "demo_vse"
    save_config(demo_config(out, epochs=8), run / "config.yaml")
    save_checkpoint(run / "ckpt" / "last.pt", {"method": "vse", "epoch": 8, "step": 80})
    code, stdout, err = cli("demo", "--out", out, "--no-progress", *args)
    assert code == 2, (stdout, err)
    assert err.startswith(f"featvlr: error: {typed}: {run} has done 8 epochs"), err
    assert len(err.strip().splitlines()) == 1
    assert stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["runs"]


def test_demo_out_that_is_a_file(cli, tmp_path):
    out = tmp_path / "X"
    out.write_text("not a folder")
    code, stdout, err = cli("demo", "--out", out)
    assert code == 2
    assert err.strip() == f"featvlr: error: {out}: --out: is a file, not a folder"
    assert out.read_text() == "not a folder"


# -- a relative data.cache and an interrupted demo build -------------------------------------

def test_relative_demo_cache_says_where_and_why_and_ctrl_c_removes_the_build(tmp_path):
    """`featvlr train --config /path/configs/demo_vse.yaml` from another folder: the first line
    names the resolved cache path; SIGINT during the build ends with exit 130, one line saying
    what was removed, and nothing left under ./features."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "featvlr.cli", "train", "--config", REPO / "configs" /
                             "demo_vse.yaml", "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    second = proc.stdout.readline()
    third = proc.stdout.readline()  # "generating the demo dataset in features/demo_data": the build is under way
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first.strip() == (f"data.cache features/demo.h5 is relative to the current folder: "
                             f"{tmp_path.resolve() / 'features' / 'demo.h5'} does not exist")
    assert second.startswith("the config asks for the demo data there (data.build_demo: true)")
    assert third.strip() == "generating the demo dataset in features/demo_data"
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("featvlr: interrupted (SIGINT): the demo build stopped before its caches were "
                                "complete; removed what it had written"), err
    assert not (tmp_path / "features").exists()
    assert not (tmp_path / "runs").exists()


def test_interrupted_demo_build_leaves_what_was_there(tmp_path, monkeypatch):
    """Stopped while extracting: the dataset this build generated is removed, a folder that was
    there before is left, and the message says which."""
    import os
    import signal

    import featvlr.extract.precomp as precomp
    from featvlr.app.demo import build_demo_caches
    from featvlr.core.errors import Interrupted

    def stop(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("not interrupted")

    monkeypatch.setattr(precomp, "extract_precomp", stop)
    features = tmp_path / "features"
    features.mkdir()
    (features / "mine.txt").write_text("kept")
    small = {"n_train": 40, "n_dev": 10, "n_test": 10, "n_cirr_train": 20, "n_cirr_val": 10, "n_cirr_test": 10}
    with pytest.raises(Interrupted) as info:
        build_demo_caches(features, progress=False, params=small)
    assert info.value.code == 130
    assert f"removed what it had written ({features / 'demo_data'})" in info.value.message
    assert f"left what was there before ({features})" not in info.value.message  # a folder, not a build output
    assert sorted(p.name for p in features.iterdir()) == ["mine.txt"]


# -- a composed run whose test split has no ground truth --------------------------------------

@pytest.fixture(scope="module")
def composed_run(tmp_path_factory):
    """A 2-epoch MLCL run on the toy CIRR-layout cache (test1 without targets), through the CLI."""
    import yaml
    from conftest import run_cli_main
    from test_mlcl import write_composed_cache

    root = tmp_path_factory.mktemp("composed_run")
    cache = write_composed_cache(root / "toy.h5")
    config = root / "mlcl.yaml"
    config.write_text(yaml.safe_dump({
        "method": "mlcl",
        "data": {"cache": str(cache), "dataset": "cirr", "dev_split": "val", "test_split": "test1"},
        "model": {"projection_dim": 16, "hidden_dim": 16},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "schedule": "constant", "select_split": "val",
                  "select_metric": "composed/arithmetic_mean", "progress": False, "max_steps_per_epoch": 3},
        "eval": {"scenarios": ["composed"], "dev_scenarios": ["composed"]}}))
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code, _, _ = run_cli_main(["train", "--config", config, "--out", root / "run"])
    return root / "run", cache, code, out.getvalue()


def test_composed_train_ends_with_the_selection_table_and_the_submission_files(composed_run):
    run, cache, code, out = composed_run
    assert code == 0
    lines = out.strip().splitlines()
    assert "(no metrics" not in out
    header = next(i for i, line in enumerate(lines) if line.startswith("val split · method mlcl"))
    assert lines[header + 1].startswith("composed ") and "arithmetic_mean" in lines[header + 1]
    sub = run / "eval" / "submission"
    assert lines[-4:] == ["no ground truth in split test1: wrote the test-server files",
                          f"  {sub / 'recall_submission_test1.json'}",
                          f"  {sub / 'recall_subset_submission_test1.json'}",
                          "score them: upload both to the CIRR evaluation server "
                          "(https://cirr.cecs.anu.edu.au/test_process/)"]
    assert (run / "eval" / "val.json").exists() and (run / "eval" / "test1.json").exists()


def test_eval_split_without_ground_truth_prints_the_files_and_the_scoring_command(composed_run, cli, tmp_path):
    run, cache, code, _ = composed_run
    out_json = tmp_path / "e" / "test1.json"
    code, out, err = cli("eval", run, "--split", "test1", "--json", out_json, "--no-plots")
    assert code == 0, err
    sub = tmp_path / "e" / "submission"
    assert out.strip().splitlines()[-3:] == [f"  {sub / 'recall_submission_test1.json'}",
                                             f"  {sub / 'recall_subset_submission_test1.json'}",
                                             "score them: upload both to the CIRR evaluation server "
                                             "(https://cirr.cecs.anu.edu.au/test_process/)"]
    assert "no ground truth in split test1: wrote the test-server files" in out


def test_submission_guide_points_at_the_demo_truth_file(tmp_path):
    import numpy as np

    from featvlr.app.evaluate import submission_guide
    from featvlr.cache.store import CacheWriter

    truth = tmp_path / "demo_data" / "truth" / "cirr_test1_edits.json"
    truth.parent.mkdir(parents=True)
    truth.write_text("[]")
    with CacheWriter(tmp_path / "c.h5", sources={"layout": "cirr", "root": str(tmp_path / "demo_data" / "cirr")}) as w:
        w.write("images/test1/global", np.zeros((2, 2), np.float32))
    lines = submission_guide(["s/recall_submission_test1.json", "s/recall_subset_submission_test1.json"], "test1",
                             tmp_path / "c.h5")
    assert lines[-1] == f"score them: featvlr eval --submission s/recall_submission_test1.json --truth {truth}"


def test_eval_scores_a_submission_against_a_truth_file(cli, tmp_path):
    import json

    sub = tmp_path / "recall_submission_test1.json"
    sub.write_text(json.dumps({"version": "rc2", "metric": "recall", "1": ["a", "b", "c"], "2": ["a", "b", "c"]}))
    (tmp_path / "recall_subset_submission_test1.json").write_text(
        json.dumps({"version": "rc2", "metric": "recall_subset", "1": ["b", "c", "d"], "2": ["b", "c", "d"]}))
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps([{"pairid": 1, "target": "b"}, {"pairid": 2, "target": "z"}]))
    code, out, err = cli("eval", "--submission", sub, "--truth", truth)
    assert code == 0, err
    assert "R@1 0.00  R@5 50.00  R@10 50.00  R@50 50.00  Rsubset@1 50.00" in out
    assert "arithmetic_mean 42.86" in out
    truth.write_text(json.dumps([{"pairid": 3, "target": "b"}]))
    code, out, err = cli("eval", "--submission", sub, "--truth", truth)
    assert code == 2
    assert err.strip() == (f"featvlr: error: {sub}: has no ranking for 1 of the 1 pairs of truth.json "
                           "(first: pair 3)")
    code, out, err = cli("eval", "--submission", sub)
    assert code == 2 and err.startswith("featvlr: error: --submission and --truth go together")


# -- featvlr train --log-to tensorboard -------------------------------------------------------

def _tiny_config(tmp_path, cache) -> Path:
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "method": "vse", "data": {"cache": str(cache), "dataset": "synthetic", "test_split": ""},
        "model": {"embed_dim": 16},
        "train": {"epochs": 3, "batch_size": 32, "progress": False, "log_every": 1, "schedule": "step",
                  "lr_steps": [2]}}))
    return config


def test_train_log_to_tensorboard_writes_every_numeric_epoch_field(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from synthetic import write_synthetic_cache
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from featvlr.core.runlog import read_log

    cache = write_synthetic_cache(tmp_path / "syn.h5", n_images=(32, 8, 8))
    code, out, err = cli("train", "--config", _tiny_config(tmp_path, cache), "--out", tmp_path / "run",
                         "--log-to", "tensorboard")
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    epochs = [r for r in read_log(tmp_path / "run") if r.get("event") == "epoch"]
    assert len(epochs) == 3
    numeric = {k for r in epochs for k, v in r.items() if isinstance(v, (int, float)) and k not in ("time", "step",
                                                                                                    "epoch")}
    assert {"lr", "train_loss", "dev/rsum", "items_per_s", "data_wait_s"} <= numeric
    assert {f"epoch/{k}" for k in numeric} <= tags
    lrs = [e.value for e in events.Scalars("epoch/lr")]
    # the rate at the end of each epoch, after its last scheduler step (lr_steps [2]: epoch 2's end starts the decay)
    assert lrs == pytest.approx([r["lr"] for r in epochs])
    assert lrs == pytest.approx([5e-4, 5e-5, 5e-5])
    assert [e.step for e in events.Scalars("epoch/dev/rsum")] == [r["step"] for r in epochs]


@pytest.mark.parametrize("value, first_line", [
    ("wandb", "featvlr: error: --log-to: expected tensorboard or jsonl, got 'wandb'"),
    ("tensorboard", "featvlr: error: --log-to tensorboard: TensorBoard is not installed "
                    "(pip install 'featvlr[tensorboard]')"),
])
def test_train_log_to_bad_value_or_missing_extra(cli, tmp_path, monkeypatch, value, first_line):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    code, out, err = cli("train", "--config", _tiny_config(tmp_path, tmp_path / "none.h5"), "--out",
                         tmp_path / "run", "--log-to", value)
    assert code == 2
    assert err.strip() == first_line
    assert not (tmp_path / "run").exists()


# -- the top-level --help ---------------------------------------------------------------------

def test_top_level_help_lists_extract_first_and_cuts_nothing():
    from typer.testing import CliRunner

    from featvlr.cli import app

    result = CliRunner().invoke(app, ["--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    commands = result.output.split("Commands:\n", 1)[1]
    assert "..." not in commands and "…" not in commands
    names = [line.split()[0] for line in commands.splitlines() if line.startswith("  ") and line[2] != " "]
    assert names[:4] == ["extract", "train", "eval", "demo"]
    assert set(names) >= {"info", "ablate", "report", "embed", "search"}
    flat = " ".join(commands.split())
    assert "Show a cache's splits, counts, shapes, dtypes, provenance and" in flat
    assert "Train a method on a feature cache; evaluate on dev each epoch and the best checkpoint on test." in flat
    assert all(len(line) <= 80 for line in result.output.splitlines())


# -- the report: metric names as the tables write them, ndcg_exp@25_nonzero, y-axes from 0 ----

def _report_runs(tmp_path, nonzero_differs: bool):
    from test_report import fake_run

    runs = []
    for i, lr in enumerate((1e-4, 3e-4, 1e-3)):
        metrics = {"rsum": 400.0 + i, "i2t/R@1": 60.0 + i, "t2i/R@1": 50.0 + i, "i2t/ndcg_exp@25": 0.61 + i / 100,
                   "i2t/ndcg_exp@25_nonzero": 0.61 + i / 100 + (0.05 if nonzero_differs and i == 1 else 0.0),
                   "i2i/ndcg_lin@10": 0.70 + i / 1000}
        runs.append(fake_run(tmp_path / f"r{i}", {"method": "vse", "train": {"seed": 0, "lr": lr}}, metrics))
    return runs


def test_report_names_metrics_as_the_tables_and_explains_nonzero(tmp_path):
    from featvlr.report import write_report

    write_report(_report_runs(tmp_path, False), tmp_path / "rep", vs=["train.lr"])
    page = (tmp_path / "rep" / "report.html").read_text()
    headline = page.split("<h2>Headline</h2>", 1)[1].split("</table>", 1)[0]
    assert "i2i ndcg_lin@10" in headline and "NDCG@10" not in headline
    assert "ndcg_exp@25_nonzero" in page
    import html

    text = html.unescape(page)
    assert ("ndcg_exp@25_nonzero is the mean over the queries whose NDCG is not zero (TERAN's i2t average); "
            "ndcg_exp@25 is the mean over all queries.") in text
    assert "; it equals ndcg_exp@25 in every row here" in text
    write_report(_report_runs(tmp_path / "b", True), tmp_path / "rep2", vs=["train.lr"])
    assert "i2t/ndcg_exp@25_nonzero differs from ndcg_exp@25 in 1 of 3 rows (vse lr=3e-4)" in \
        html.unescape((tmp_path / "rep2" / "report.html").read_text())


def test_report_plots_start_their_y_axes_at_zero(tmp_path, monkeypatch):
    import matplotlib.figure

    from featvlr.report import write_report

    seen = []
    original = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        seen.extend((ax.get_ylim()[0], ax.get_ylabel()) for ax in fig.axes if ax.has_data())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    write_report(_report_runs(tmp_path, False), tmp_path / "rep", vs=["train.lr"])
    assert seen and all(bottom == 0 for bottom, _ in seen), seen


def test_scoring_a_submission_gives_the_evaluations_metrics(tmp_path):
    """Submission files of a split that has targets, scored against a truth file made from
    them, give exactly the metrics the evaluation computes on that split."""
    import json

    import torch
    from test_mlcl import write_composed_cache

    from featvlr.cache.store import FeatureStore
    from featvlr.evaluation.composed import (
        cirr_submission,
        evaluate_composed,
        score_cirr_submission,
        write_cirr_submission,
    )

    split = FeatureStore(write_composed_cache(tmp_path / "toy.h5", n_sets=(2, 12))).split("val")
    comp, names = split.composed(), split.image_ids()
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(len(comp["reference"]), 8, generator=gen)
    g = torch.randn(len(names), 8, generator=gen)
    recall, subset = cirr_submission(q, g, comp, names)
    paths = write_cirr_submission(tmp_path, recall, subset, name="val")
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps([{"pairid": int(p), "target": names[int(t)]}
                                 for p, t in zip(comp["pair_ids"], comp["target"])]))
    scored = score_cirr_submission(paths[0], truth)
    expected = evaluate_composed(q, g, comp, protocol="cirr")
    for key in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "arithmetic_mean"):
        assert scored[f"composed/{key}"] == pytest.approx(expected[f"composed/{key}"]), key
    assert 0 < scored["composed/R@5"] < 100
