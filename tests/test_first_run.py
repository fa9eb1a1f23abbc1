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

    from featvlr.demo_run import build_demo_caches
    from featvlr.errors import Interrupted
    import featvlr.sources.precomp as precomp

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
