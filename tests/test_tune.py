"""`featvlr tune`: space specs, a pruned study whose best trial re-evaluates to its value, two
workers on one SQLite study, a worker killed mid-trial, and bad input; `ablate` on the grid
sampler and `compare` on two tiny methods."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from synthetic import write_synthetic_cache, write_synthetic_config

from featvlr.core.errors import ConfigError
from featvlr.tuning.space import parse_dimension, parse_space


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    cache = write_synthetic_cache(root / "syn.h5", n_images=(64, 16, 16))
    return write_synthetic_config(root / "base.yaml", cache, epochs=2,
                                  tune={"space": {"train.lr": "log:1e-3:3e-2", "loss.margin": "0.05:0.4"}})


def _study(out: Path):
    import optuna

    meta = yaml.safe_load((out / "tune.yaml").read_text())
    return optuna.load_study(study_name=meta["study"], storage=meta["storage"])


def _worker(config: Path, out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "featvlr.cli", "tune", "--config", str(config), "--out", str(out),
                             "--no-report", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_space_specs_read_like_set(base_config):
    dims = {d.key: d for d in parse_space(base_config, ["train.lr=log:1e-4:3e-3", "loss.margin=0.1:0.4",
                                                       "train.epochs=1:3", "model.pooling=choice:mean,gpo"])}
    assert (dims["train.lr"].kind, dims["train.lr"].log, dims["train.lr"].low) == ("float", True, 1e-4)
    assert dims["train.epochs"].kind == "int"  # an integer key searched as A:B
    assert dims["model.pooling"].choices == ("mean", "gpo")
    assert parse_dimension("train.lr_steps=choice:[1,2],[3]").choices == ([1, 2], [3])
    assert dims["train.lr"].spec == "log:0.0001:0.003"


@pytest.mark.parametrize("args, first", [
    (["--space", "train.lrr=log:1e-4:1e-3"], "--space train.lrr=log:0.0001:0.001: unknown config key 'train.lrr'"),
    (["--space", "train.lr=0:1e-3"], "--space train.lr=0:0.001: expected > 0, got 0.0"),
    (["--space", "loss.margin=0.4:0.1"], "--space loss.margin=0.4:0.1: the range is reversed"),
    (["--space", "train.lr=log:-1:1"], "--space train.lr=log:-1:1: a log range needs a low end above 0"),
    (["--space", "model.pooling=choice:mean,nosuch"], "--space model.pooling=choice:mean,nosuch: expected one of"),
    (["--space", "train.lr"], "--space expects KEY=SPEC"),
    (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "--storage postgresql://nobody@127.0.0.1:9/none: "
                                                            "cannot open the study storage"),
    (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open the study storage"),
])
def test_bad_specs_and_storage_are_one_line_exit_2(base_config, tmp_path, cli, args, first):
    out = tmp_path / "t"
    code, stdout, err = cli("tune", "--config", base_config, "--out", out, "--trials", "1", *args)
    assert code == 2, err
    assert err.startswith("featvlr: error: " + first), err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_grid_without_equals_names_grid(base_config, tmp_path, cli):
    code, _, err = cli("ablate", "--config", base_config, "--grid", "method", "--out", tmp_path / "a")
    assert code == 2 and err.startswith("featvlr: error: --grid expects key=v1,v2,..."), err


@pytest.mark.parametrize("args, first", [
    (["--grid", "loss.margin=abc"], "grid cell loss.margin=abc: --grid loss.margin: expected a number, got 'abc'"),
    (["--set", "loss.margin=0.2", "--grid", "loss.margin=0.1,abc"],
     "grid cell loss.margin=abc: --grid loss.margin: expected a number, got 'abc'"),
    (["--set", "train.lr=abc", "--grid", "loss.margin=0.1"],
     "grid cell loss.margin=0.1: --set train.lr: expected a number, got 'abc'"),
    (["--grid", "loss.margin=0.1", "--seeds", "-1"], "grid cell loss.margin=0.1: --seeds: expected >= 0, got -1"),
])
def test_a_bad_grid_value_names_grid_and_a_bad_set_names_set(base_config, tmp_path, cli, args, first):
    out = tmp_path / "a"
    code, stdout, err = cli("ablate", "--config", base_config, *args, "--out", out)
    assert code == 2, err
    assert err.startswith(f"featvlr: error: {base_config}: {first}"), err
    assert len(err.strip().splitlines()) == 1 and stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("jobs", ["-1", "-3"])
def test_negative_jobs_is_refused(base_config, tmp_path, cli, jobs):
    out = tmp_path / "a"
    code, stdout, err = cli("ablate", "--config", base_config, "--grid", "loss.margin=0.1", "--jobs", jobs,
                            "--out", out)
    assert code == 2, err
    assert err == f"featvlr: error: --jobs: expected >= 0 (0: the default), got {jobs}\n"
    assert stdout == "" and not out.exists()


def test_ablate_help_says_what_jobs_0_means(cli):
    code, out, _ = cli("ablate", "--help")
    assert code == 0 and "0 or unset: one per GPU" in " ".join(out.split())


def test_study_with_pruning_and_best_trial_reevaluates(base_config, tmp_path, cli):
    import optuna

    from featvlr.tuning.tune import run_tune

    out = tmp_path / "tune"
    first = run_tune(base_config, None, out, trials=3, prune_startup=2, prune_warmup=1, quiet=True, report=False)
    assert first["trials"] == [0, 1, 2]
    study = _study(out)
    study.enqueue_trial({"train.lr": 1e-3, "loss.margin": 0.05})  # the slowest learner: pruned after epoch 1
    second = run_tune(base_config, None, out, trials=3, prune_startup=2, prune_warmup=1, quiet=True)
    study = _study(out)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert states[3] == optuna.trial.TrialState.PRUNED and study.trials[3].last_step == 1
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 6
    pruned = Path(study.trials[3].user_attrs["run_dir"])
    assert (pruned / "ckpt" / "last.pt").exists() and not (pruned / "eval").exists()  # no test looked at
    best = study.best_trial
    assert second["best"]["number"] == best.number
    code, _, err = cli("eval", best.user_attrs["run_dir"], "--split", "dev", "--scenarios", "i2t,t2i",
                       "--json", tmp_path / "dev.json")
    assert code == 0, err
    assert json.loads((tmp_path / "dev.json").read_text())["metrics"]["rsum"] == pytest.approx(best.value)
    html = (out / "report" / "study.html").read_text()
    assert all(f"trial_{n:04d}" in html for n in range(6))
    assert {"optimization_history.png", "param_importances.png", "intermediate_values.png"} <= \
        {p.name for p in second["report"]["plots"]}


def test_printed_retrain_command_works_as_printed(base_config, tmp_path, cli):
    """The "retrain it:" line has its own --out under the tuning folder; run as printed, it trains there."""
    import shlex

    out = tmp_path / "tune q"  # a space: the printed command quotes it
    code, stdout, err = cli("tune", "--config", base_config, "--trials", "1", "--set", "train.epochs=1",
                            "--out", out, "--no-report")
    assert code == 0, err
    line = next(t for t in stdout.splitlines() if t.startswith("retrain it: "))
    argv = shlex.split(line[len("retrain it: "):])
    assert argv[:4] == ["featvlr", "train", "--config", str(base_config)] and "--set" in argv
    assert "train.epochs=1" in argv
    target = Path(argv[argv.index("--out") + 1])
    assert target == out / "retrain_trial_0000" and not target.exists()
    code, _, err = cli(*argv[1:])
    assert code == 0, err
    assert (target / "ckpt" / "best.pt").exists() and (target / "eval" / "test.json").exists()


def test_two_workers_share_one_sqlite_study(base_config, tmp_path):
    out = tmp_path / "shared"
    workers = [_worker(base_config, out, "--trials", "3", "--prune-startup", "9") for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outs]
    study = _study(out)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 6  # no values proposed twice
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{n:04d}" for n in range(6)]
    lines = [line for o in outs for line in o[0].splitlines() if line.startswith("trial ")]
    assert len(lines) == 6 and all("train.lr=" in line and "dev rsum" in line and "best" in line for line in lines)
    assert any(line.startswith("[trial_0") and "epoch 1:" in line for o in outs for line in o[1].splitlines())


def test_killed_worker_trial_fails_and_is_redone_in_a_new_folder(base_config, tmp_path):
    out = tmp_path / "killed"
    args = ("--set", "train.epochs=40", "--heartbeat", "1", "--pruner", "none")
    first = _worker(base_config, out, "--trials", "2", *args)
    last = out / "trial_0000" / "ckpt" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert last.exists(), first.communicate()[1][-2000:]
    first.send_signal(signal.SIGKILL)
    first.communicate()
    killed = out / "trial_0000"
    stamp = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    time.sleep(2.5)  # past the grace period (twice the heartbeat)
    second = _worker(base_config, out, "--trials", "2", *args)
    stdout, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    study = _study(out)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}
    retried = study.trials[1]
    assert retried.system_attrs.get("failed_trial") == 0 and retried.params == study.trials[0].params
    assert Path(retried.user_attrs["run_dir"]).name == "trial_0001"
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == stamp  # never touched again
    assert not (killed / "eval").exists()


def test_ablate_runs_on_the_grid_sampler(base_config, tmp_path, capsys):
    import optuna

    from featvlr.tuning.ablate import run_ablation
    from featvlr.tuning.grid import study_name

    out = tmp_path / "abl"
    result = run_ablation(base_config, ["loss.margin=0.1,0.2"], [0, 1], out, jobs=1, report=False)
    names = [Path(r["run_dir"]).relative_to(out).as_posix() for r in result["runs"]]
    assert names == ["loss.margin=0.1/seed0", "loss.margin=0.1/seed1", "loss.margin=0.2/seed0",
                     "loss.margin=0.2/seed1"]
    assert [r["status"] for r in result["runs"]] == ["trained"] * 4
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("run ")]
    assert len(lines) == 4 and all(" trained · dev rsum " in line and " of 4 left · " in line for line in lines)
    assert sorted(int(line.split(" of 4 left")[0].rsplit(" ", 1)[1]) for line in lines) == [0, 1, 2, 3]
    epoch_lines = [line for line in captured.err.splitlines() if "epoch 1:" in line]
    assert len(epoch_lines) == 4 and all(line.startswith("[loss.margin=0.") and " seed" in line.split("]")[0]
                                         for line in epoch_lines)
    study = optuna.load_study(study_name=study_name(names), storage=f"sqlite:///{out / 'study.db'}")
    assert isinstance(study.trials[0].distributions["run"], optuna.distributions.CategoricalDistribution)
    assert sorted(t.params["run"] for t in study.trials) == sorted(names)
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_two_ablate_processes_share_the_grid(base_config, tmp_path):
    from featvlr.tuning.ablate import run_ablation

    out = tmp_path / "abl2"
    result = run_ablation(base_config, ["loss.margin=0.1,0.2,0.3"], [0], out, jobs=2)
    assert sorted(r["status"] for r in result["runs"]) == ["trained"] * 3
    assert len(list(out.glob("*/seed0/eval/test.json"))) == 3
    assert (out / "report" / "report.html").exists()


def test_compare_equal_budget(base_config, tmp_path):
    from featvlr.tuning.compare import run_compare

    cfg = yaml.safe_load(base_config.read_text())
    cfg["train"]["epochs"] = 1
    for method in ("vse", "hrem"):
        (tmp_path / f"syn_{method}.yaml").write_text(yaml.safe_dump({**cfg, "method": method}))
    out = tmp_path / "cmp"
    result = run_compare(["vse", "hrem"], tmp_path, "syn", 2, [0, 1], out, pruner="none")
    summary = result["summary"]
    assert summary["budget"] == 2 and set(summary["methods"]) == {"vse", "hrem"}
    for m in ("vse", "hrem"):
        row = summary["methods"][m]
        assert sum(row["trials"].values()) == 2
        assert sorted(row["tuned_test"]) == [0, 1] and sorted(row["untuned_test"]) == [0, 1]
    md = (out / "compare.md").read_text()
    assert "Budget: 2 trials per method" in md and "hrem − vse" in md
    again = run_compare(["vse", "hrem"], tmp_path, "syn", 2, [0, 1], out, pruner="none")  # nothing left to do
    assert sum(again["summary"]["methods"]["vse"]["trials"].values()) == 2


def test_space_must_fit_the_method(base_config):
    with pytest.raises(ConfigError, match="loss.n_dim"):
        parse_space(base_config, ["loss.n_dim=int:8:16"])  # an hrem option, not vse's


def _start_private_postgres(root: Path) -> tuple[str | None, str]:
    """A throwaway PostgreSQL server (Debian's binaries) on a Unix socket: (URL, why not)."""
    import glob
    import shutil
    import socket
    import tempfile

    found = shutil.which("initdb")
    bindir = Path(found).resolve().parent if found else None
    if bindir is None:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        bindir = Path(versions[-1]).parent if versions else None
    if bindir is None:
        return None, "no PostgreSQL server binaries (initdb) on this machine"
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres account
        if shutil.which("runuser") is None:
            return None, "running as root without runuser to start PostgreSQL as another account"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no postgres account to run the server"
        as_user = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="featvlr-pg-"))
    os.chmod(data, 0o777)
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init = subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        return None, f"initdb failed: {init.stderr.strip()[-300:]}"
    start = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                                      "-o", f"-p {port} -k {data} -c listen_addresses=''", "start"],
                           capture_output=True, text=True)
    if start.returncode != 0:
        return None, f"pg_ctl start failed: {start.stderr.strip()[-300:]}"
    root.joinpath("stop").write_text(" ".join(as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m",
                                                          "immediate", "stop"]))
    return f"postgresql://postgres@/postgres?host={data}&port={port}", ""


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """FEATVLR_TEST_POSTGRES (what .ci/run starts), else a private server, else a stated skip."""
    url = os.environ.get("FEATVLR_TEST_POSTGRES")
    root = tmp_path_factory.mktemp("pg")
    reason = ""
    if not url:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            pytest.skip("psycopg2 is not installed (pip install featvlr[postgres])")
        url, reason = _start_private_postgres(root)
    if not url:
        pytest.skip(f"no PostgreSQL server could be started: {reason}")
    yield url
    stop = root / "stop"
    if stop.exists():
        subprocess.run(stop.read_text().split(), capture_output=True)


def test_two_workers_share_a_postgresql_study(base_config, tmp_path, postgres_url):
    import optuna

    from featvlr.tuning.storage import open_storage

    name = f"featvlr-test-{os.getpid()}-{int(time.time())}"
    outs = [tmp_path / "machine_a", tmp_path / "machine_b"]  # as on two machines: a tuning folder each
    workers = [_worker(base_config, out, "--trials", "2", "--storage", postgres_url, "--study", name,
                       "--prune-startup", "9") for out in outs]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [r[1][-2000:] for r in results]
    study = optuna.load_study(study_name=name, storage=open_storage(postgres_url))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    folders = sorted(p.name for out in outs for p in out.glob("trial_*"))
    assert folders == [f"trial_{n:04d}" for n in range(4)]
    optuna.delete_study(study_name=name, storage=open_storage(postgres_url))
