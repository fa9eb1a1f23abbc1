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


def test_demo_out_that_is_a_file(cli, tmp_path):
    out = tmp_path / "X"
    out.write_text("not a folder")
    code, stdout, err = cli("demo", "--out", out)
    assert code == 2
    assert err.strip() == f"featvlr: error: {out}: --out: is a file, not a folder"
    assert out.read_text() == "not a folder"
