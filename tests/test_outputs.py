"""What the commands print and write: train and eval end with a titled metric table, eval JSON
records the checkpoint's config hash, JSON numbers carry no float noise, progress is plain
lines off a terminal, the scenario figure keeps one unit per panel, `featvlr --version`."""
from __future__ import annotations

import io
import json

import pytest
import yaml
from synthetic import write_synthetic_cache

from featvlr import __version__
from featvlr.core.checkpoint import load_checkpoint
from featvlr.core.runlog import _Bar
from featvlr.evaluation.plots import scenario_panels
from featvlr.evaluation.results import clean_number


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch vse run trained through `featvlr train`, and what it printed."""
    from conftest import run_cli_main

    root = tmp_path_factory.mktemp("out")
    cache = write_synthetic_cache(root / "syn.h5", n_images=(64, 16, 16))
    cfg = {"method": "vse", "data": {"cache": str(cache), "dataset": "synthetic"}, "model": {"embed_dim": 16},
           "train": {"epochs": 1, "batch_size": 32}, "eval": {"scenarios": ["i2t", "t2i", "i2i"],
                                                             "dev_scenarios": ["i2t", "t2i"]}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = root / "run"

    import contextlib

    out, err = io.StringIO(), io.StringIO()  # a module fixture cannot use capsys
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code, _, _ = run_cli_main(["train", "--config", path, "--out", run, "--no-progress"])
    return {"run": run, "code": code, "out": out.getvalue(), "err": err.getvalue()}


def test_train_ends_with_the_titled_table(trained):
    assert trained["code"] == 0, trained["err"]
    lines = trained["out"].strip().splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("test split · method vse · run "))
    assert str(trained["run"]) in lines[title]
    assert lines[title + 1].startswith("i2t") and any(line.startswith("summary") for line in lines[title:])
    assert lines[-1].startswith("results: ") and "%" not in trained["err"]  # no bar redrawn into a pipe


def test_eval_json_carries_the_checkpoint_config_hash(trained, tmp_path, cli):
    run = trained["run"]
    ckpt_hash = load_checkpoint(run / "ckpt" / "best.pt")["config_sha256"]
    own = json.loads((run / "eval" / "test.json").read_text())
    assert own["config_sha256"] == ckpt_hash
    # a caller's cache override changes what is read, not the config recorded
    code, out, err = cli("eval", run, "--json", tmp_path / "e.json", "--scenarios", "i2t,t2i", "--no-plots",
                         "--cache", own["config"]["data"]["cache"])
    assert code == 0, err
    rec = json.loads((tmp_path / "e.json").read_text())
    assert rec["config_sha256"] == ckpt_hash and rec["config"] == own["config"]
    assert out.splitlines()[0] == f"test split · method vse · run {run}"
    assert out.strip().splitlines()[-1] == f"results: {tmp_path / 'e.json'}"
    for value in list(rec["metrics"].values()) + [x for c in rec["curves"].values() for x in c]:
        assert value == round(value, 10)


def test_clean_number_drops_float_noise():
    assert clean_number(55.00000000000001) == 55.0 and json.dumps(clean_number(100 * 0.55)) == "55.0"
    assert clean_number(0.123456789012) == 0.123456789  # ten decimals kept
    assert clean_number(float("nan")) != clean_number(float("nan"))


def test_progress_is_plain_lines_off_a_terminal():
    stream = io.StringIO()
    bar = _Bar(100, "epoch 1/3", True, stream)
    for _ in range(100):
        bar.update(1, loss=0.25)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and 3 <= len(lines) <= 5
    assert lines[-1] == "epoch 1/3: 100/100, loss 0.25"
    silent = io.StringIO()
    _Bar(10, "x", False, silent).update(5)
    assert silent.getvalue() == ""


def test_scenario_panels_keep_one_unit_each():
    metrics = {"i2t/R@1": 10.0, "i2t/R@5": 20.0, "i2t/medr": 4.0, "i2t/ndcg_exp@25": 0.5, "rsum": 150.0,
               "r_mean": 25.0, "i2i/ndcg_lin@10": 0.6}
    panels = {title: (unit, set(vals)) for title, unit, vals in scenario_panels(metrics)}
    assert panels["i2t: recall (%)"] == ("%", {"R@1", "R@5"})
    assert panels["i2t: NDCG (0-1)"] == ("0-1", {"ndcg_exp@25"})
    assert panels["rsum (sum of recalls)"][1] == {"rsum"} and panels["mean recall"][1] == {"r_mean"}
    assert panels["i2i: NDCG (0-1)"] == ("0-1", {"ndcg_lin@10"})


def test_version(cli_process):
    proc = cli_process("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"featvlr {__version__}"
