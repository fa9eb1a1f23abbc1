"""Every bad input and every interruption: one line naming the file or key, its exit status,
and nothing half-written.

``CASES`` is the table: one row per bad input of the command line, each run in this process
(the ``cli`` fixture) against tiny caches, asserting the exit status, a substring of the
one-line message and that the files the command would write do not exist. The config rows
are generated from the schema: every numeric and choice field of every method's options.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from synthetic import write_synthetic_cache

from featvlr.config import DataConfig, EvalConfig, TrainConfig
from featvlr.core.schema import rule_of
from featvlr.methods.registry import get_method, list_methods

TESTS = Path(__file__).resolve().parent


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("featvlr: error: "), err
    return lines[0]


def _no_partial(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith((".partial", ".tmp")) or ".partial" in p.name]
    assert not left, left


# -- config values: generated from the schema -----------------------------------------------


def bad_values(f: dataclasses.Field, tp) -> list:
    """Values of field ``f`` that its rule refuses (a wrong type, out of range, not a choice)."""
    rule = rule_of(f)
    origin = typing.get_origin(tp)
    inner = typing.get_args(tp)[0] if origin is list else tp
    if rule is None:
        return []
    if rule.choices:
        return [["nonsense"] if origin is list else "nonsense"]
    out: list = ["abc"]
    step = 1 if inner is int else 0.5
    if rule.min is not None:
        out.append(rule.min if rule.min_open else rule.min - step)
    if rule.max is not None:
        out.append(rule.max if rule.max_open else rule.max + step)
    return [[v] if origin is list and not isinstance(v, str) else v for v in out]


def _config_cases() -> list:
    sections = {("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig)}
    cases = []
    for name in list_methods():
        method = get_method(name)
        owned = [("model", method.ModelOptions), ("loss", method.LossOptions)]
        for section, cls in owned + (sorted(sections, key=str) if name == "vse" else []):
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                tp = hints[f.name]
                inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
                if inner in (int, float) or rule_of(f) is not None:
                    assert rule_of(f) is not None, f"{name}: {section}.{f.name} has no range"
                for value in bad_values(f, tp):
                    cases.append(pytest.param(name, f"{section}.{f.name}", value,
                                              id=f"{name}-{section}.{f.name}={value}"))
    return cases


def _yaml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


@pytest.mark.parametrize("method, key, value", _config_cases())
def test_every_option_refuses_bad_values(cli, tmp_path, method, key, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"method: {method}\n")
    code, _, err = cli("train", "--config", config, "--set", f"{key}={_yaml(value)}", "--out", tmp_path / "run")
    line = _one_line(err)
    assert code == 2
    assert f"--set {key}" in line
    assert not (tmp_path / "run").exists()


def test_file_values_name_the_file_and_key(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("method: vse\ntrain:\n  lr: abc\n")
    code, _, err = cli("train", "--config", config, "--set", "train.epochs=2", "--out", tmp_path / "run")
    assert code == 2 and f"{config}: train.lr: expected a number" in _one_line(err)


@pytest.mark.parametrize("value, expected", [("no", "no"), ("yes", "yes"), ("off", "no"), ("auto", "auto")])
def test_yes_no_options_take_yaml_booleans(value, expected):
    from featvlr.config import load_config

    cfg = load_config(None, [f"data.in_memory={value}", f"data.on_device={value}"])
    assert cfg.data.in_memory == cfg.data.on_device == expected


# -- the table: one row per bad input of the command line -----------------------------------

QUICK = ["data.dataset=synthetic", "model.embed_dim=16", "train.batch_size=32", "train.progress=false",
         "train.eval_every=0", "data.test_split=", "eval.dev_scenarios=[i2t, t2i]"]


def _config(path: Path, cache: Path, method: str = "vse", **sections: dict) -> Path:
    import yaml

    raw = {"method": method, "data": {"cache": str(cache)}, **sections}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by the rows: caches good and damaged, configs, a trained run, odd files."""
    root = tmp_path_factory.mktemp("inputs")
    w = SimpleNamespace(root=root, cache=write_synthetic_cache(root / "syn.h5"))
    w.vse = _config(root / "vse.yaml", w.cache)
    w.hrem = _config(root / "hrem.yaml", w.cache, method="hrem")
    w.bad_lr = _config(root / "bad_lr.yaml", w.cache, train={"lr": "abc"})
    # NaN in the middle of the training captions' tokens (the pooled vectors stay finite)
    w.nan_cache = root / "nan_tokens.h5"
    shutil.copy(w.cache, w.nan_cache)
    with h5py.File(w.nan_cache, "r+") as f:
        f["texts/train/tokens"][700:702] = np.nan
    w.nan_vse = _config(root / "nan_vse.yaml", w.nan_cache)
    # 0xFF bytes written over the middle of the stored tokens
    w.ff_cache = root / "ff_tokens.h5"
    shutil.copy(w.cache, w.ff_cache)
    with h5py.File(w.ff_cache, "r") as f:
        offset = f["texts/train/tokens"].id.get_offset()
    with open(w.ff_cache, "r+b") as fh:
        fh.seek(offset + 64 * 900)
        fh.write(b"\xff" * 640)
    w.text_npy = root / "notes.npy"
    w.text_npy.write_text("these are not scores\n")
    w.sims = root / "sims.npy"
    np.save(w.sims, np.random.default_rng(0).random((16, 80), dtype=np.float32))
    w.wrong_sims = root / "wrong.npy"
    np.save(w.wrong_sims, np.zeros((5, 7), dtype=np.float32))
    w.not_h5 = root / "plain.h5"
    w.not_h5.write_text("not hdf5")
    w.run = root / "vse_run"
    from featvlr.config import load_config
    from featvlr.training.trainer import train

    train(load_config(w.vse, [*QUICK, "train.epochs=1"]), w.run)
    return w


# (id, arguments, exit status, substring of the one-line message, outputs that must not exist)
# Arguments and outputs are templates: {cache}, {vse}, {run}... from `world`; {out} is a fresh folder.
CASES = [
    ("batch-size-0", "train -c {vse} --set train.batch_size=0 -o {out}/run", 2,
     "--set train.batch_size: expected >= 2, got 0", ["{out}/run"]),
    ("epochs-negative", "train -c {vse} --set train.epochs=-1 -o {out}/run", 2,
     "--set train.epochs: expected >= 1, got -1", ["{out}/run"]),
    ("lr-not-a-number", "train -c {vse} --set train.lr=abc -o {out}/run", 2,
     "--set train.lr: expected a number, got 'abc'", ["{out}/run"]),
    ("lr-bad-in-file", "train -c {bad_lr} -o {out}/run", 2, "bad_lr.yaml: train.lr: expected a number", ["{out}/run"]),
    ("unknown-key", "train -c {vse} --set train.lrr=1 -o {out}/run", 2, "did you mean 'lr'", ["{out}/run"]),
    ("unknown-method", "train -c {vse} --set method=vsee -o {out}/run", 2, "did you mean 'vse'", ["{out}/run"]),
    ("bad-choice", "train -c {vse} --set data.in_memory=maybe -o {out}/run", 2,
     "--set data.in_memory: expected one of auto, yes, no, got 'maybe'", ["{out}/run"]),
    ("missing-config", "train -c {out}/nope.yaml -o {out}/run", 2, "no such config file", ["{out}/run"]),
    ("resume-other-method", "train -c {hrem} -o {run} --resume", 2,
     "--resume: the checkpoint is a 'vse' run, the config asks for 'hrem'", []),
    ("resume-without-checkpoint", "train -c {vse} -o {out}/run --resume", 2, "has no ckpt/last.pt", ["{out}/run"]),
    ("run-folder-taken", "train -c {vse} -o {run}", 2, "pass --resume to continue it", []),
    ("nan-in-training-tokens", "train -c {nan_vse} -o {out}/run", 2,
     "the training inputs hold NaN or inf values: texts/train/tokens at caption", ["{out}/run"]),
    ("info-check-0xff-tokens", "info --check {ff_cache}", 2,
     "split 'train', dataset texts/train/tokens: NaN or inf values, first at row 900 (caption", []),
    ("info-missing-cache", "info {out}/none.h5", 2, "no such feature cache", []),
    ("info-not-hdf5", "info {not_h5}", 2, "not a readable HDF5 feature cache", []),
    ("sims-text-file", "eval --sims {text_npy} --cache {cache} --json {out}/r.json", 2, "not a numpy array file",
     ["{out}/r.json"]),
    ("sims-wrong-shape", "eval --sims {wrong_sims} --cache {cache} --json {out}/r.json", 2,
     "shape (5, 7), but split 'test' has 16 images and 80 texts", ["{out}/r.json"]),
    ("sims-uni-modal", "eval --sims {sims} --cache {cache} --scenarios i2i --json {out}/r.json", 2,
     "scenario i2i needs embeddings", ["{out}/r.json"]),
    ("composed-on-vse-run", "eval {run} --scenarios composed --json {out}/r.json", 2,
     "scenario composed needs a composed method (combiner, mlcl); this run is 'vse'", ["{out}/r.json"]),
    ("unknown-scenario", "eval {run} --scenarios i2x --json {out}/r.json", 2, "unknown scenario 'i2x'",
     ["{out}/r.json"]),
    ("missing-run", "eval {out}/norun --json {out}/r.json", 2, "no such run folder or checkpoint", ["{out}/r.json"]),
    ("missing-embeddings", "eval --embeddings {out}/e.npz --cache {cache} --json {out}/r.json", 2, "no such file",
     ["{out}/r.json"]),
    ("extract-missing-root", "extract precomp --root {out}/nothere --out {out}/x.h5", 2, "no such folder",
     ["{out}/x.h5"]),
    ("extract-onto-a-cache", "extract precomp --root {out} --out {cache}", 2, "the cache exists already", []),
]


@pytest.mark.parametrize("args, code, needle, absent", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input(cli, world, tmp_path, args, code, needle, absent):
    names = {k: str(v) for k, v in vars(world).items()} | {"out": str(tmp_path)}
    if "extract precomp --root {out} " in args:  # a precomp folder, so the existing cache is the problem
        (tmp_path / "train_ims.npy").write_bytes(b"")
    before = sorted(p for p in world.root.rglob("*"))
    got, _, err = cli(*[a.format(**names) for a in args.split()])
    line = _one_line(err)
    assert got == code, err
    assert needle in line
    for path in absent:
        assert not Path(path.format(**names)).exists(), path
    _no_partial(world.root)
    _no_partial(tmp_path)
    assert sorted(p for p in world.root.rglob("*")) == before


def test_yes_no_options_train(cli, world, tmp_path):
    code, _, err = cli("train", "-c", world.vse, *[x for o in QUICK for x in ("--set", o)], "--set",
                       "train.epochs=1", "--set", "data.in_memory=no", "--set", "data.on_device=no",
                       "-o", tmp_path / "r")
    assert code == 0, err


def test_sims_with_all_says_what_is_skipped(cli, world, tmp_path):
    code, out, err = cli("eval", "--sims", world.sims, "--cache", world.cache, "--scenarios", "all",
                         "--json", tmp_path / "r.json", "--no-plots")
    assert code == 0, err
    assert "skipped i2i, t2t, i2it, t2it, composed: a similarity matrix gives i2t and t2i only" in out
    import json

    assert set(json.loads((tmp_path / "r.json").read_text())["input"]["skipped"]) == {"i2i", "t2t", "i2it",
                                                                                     "t2it", "composed"}


def test_info_check_passes_a_sound_cache(cli, world):
    code, out, err = cli("info", "--check", world.cache)
    assert code == 0, err
    assert "all finite" in out


# -- interruptions: real processes and real signals -------------------------------------------

def _popen(*args, cwd, env=None, code=None) -> subprocess.Popen:
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "featvlr.cli"]
    return subprocess.Popen([*head, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def _log_steps(run: Path) -> tuple[int, int]:
    """(last step, last finished epoch) in the run's log.jsonl so far."""
    import json

    step = epoch = 0
    path = run / "log.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line being written
                continue
            step = max(step, int(rec.get("step", 0)))
            if rec.get("event") == "epoch":
                epoch = max(epoch, int(rec["epoch"]))
    return step, epoch


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _train_args(world, run: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "-c", world.vse, *[x for o in [*QUICK, f"train.epochs={epochs}", *extra] for x in ("--set", o)],
            "-o", run]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_train_says_what_is_saved_and_how_to_resume(world, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = _popen(*_train_args(world, run, 12), cwd=tmp_path)
    _wait_for(proc, lambda: _log_steps(run)[1] >= 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"featvlr: interrupted \({sig.name}\): stopped in epoch (\d+); epoch (\d+) \(step \d+\) "
                         r"is safely saved in (\S+); continue with: (.+)", last)
    assert match, last
    assert int(match[2]) >= 2 and Path(match[3]) == run / "ckpt" / "last.pt"
    _no_partial(tmp_path)
    command = shlex.split(match[4])
    assert command[0] == "featvlr" and command[-1] == "--resume"
    resumed = subprocess.run([sys.executable, "-m", "featvlr.cli", *command[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} after epoch {match[2]}" in resumed.stderr
    from featvlr.core.checkpoint import load_checkpoint

    assert load_checkpoint(run / "ckpt" / "last.pt")["epoch"] == 12


def test_interrupt_before_the_first_epoch_leaves_no_run_folder(world, tmp_path):
    run = tmp_path / "run"
    proc = _popen(*_train_args(world, run, 40, "train.batch_size=4", "train.log_every=1"), cwd=tmp_path)
    _wait_for(proc, lambda: _log_steps(run)[0] >= 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if _log_steps(run)[1] or (run / "ckpt" / "last.pt").exists():
        pytest.skip("the first epoch finished before the signal")
    assert proc.returncode == 130, err
    assert "no epoch was finished, so nothing was saved" in err.strip().splitlines()[-1]
    assert not run.exists()


def test_interrupted_extract_leaves_nothing_behind(tmp_path):
    root = tmp_path / "precomp"
    root.mkdir()
    rng = np.random.default_rng(0)
    np.save(root / "train_ims.npy", rng.normal(size=(2000, 4, 8)).astype(np.float32))
    words = ["a", "dog", "runs", "on", "the", "beach", "two", "people", "sit", "near", "water"]
    (root / "train_caps.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(10000)) + "\n")
    out = tmp_path / "features" / "x.h5"
    proc = _popen("extract", "precomp", "--root", root, "--out", out, "--no-progress", "--relevance", "none",
                  cwd=tmp_path)
    _wait_for(proc, lambda: out.with_name(out.name + ".partial").exists())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"featvlr: interrupted (SIGINT): extract stopped before the cache was complete; it left nothing behind "
        f"({out} was not created, no partial file remains)")
    assert not out.exists() and not list(out.parent.glob("*partial*"))


def test_sigkill_at_a_random_step_then_resume_gives_the_same_weights(world, tmp_path):
    epochs, extra = 4, ("train.log_every=1",)
    full = subprocess.run([sys.executable, "-m", "featvlr.cli", *map(str, _train_args(world, tmp_path / "full",
                                                                                     epochs, *extra))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    total = _log_steps(tmp_path / "full")[0]
    kill_at = random.Random().randint(2, total - 2)
    run = tmp_path / "killed"
    proc = _popen(*_train_args(world, run, epochs, *extra), cwd=tmp_path)
    _wait_for(proc, lambda: _log_steps(run)[0] >= kill_at)
    proc.kill()
    proc.communicate(timeout=60)
    again = _train_args(world, run, epochs, *extra) + (["--resume"] if (run / "ckpt" / "last.pt").exists() else [])
    resumed = subprocess.run([sys.executable, "-m", "featvlr.cli", *map(str, again)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (kill_at, resumed.stderr)
    from featvlr.core.checkpoint import load_checkpoint

    a = load_checkpoint(tmp_path / "full" / "ckpt" / "last.pt")
    b = load_checkpoint(run / "ckpt" / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs and a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), (kill_at, key)
    _no_partial(tmp_path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_a_dead_writer_are_removed(tmp_path):
    from featvlr.core.fileio import remove_stale_partials

    stale = tmp_path / f"last.{_dead_pid()}.partial.pt"
    live = tmp_path / f"best.{os.getpid()}.partial.pt"
    foreign = tmp_path / "notes.partial.txt"  # not a featvlr temporary name: left alone
    for p in (stale, live, foreign):
        p.write_bytes(b"half")
    assert remove_stale_partials(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_training_removes_a_killed_writers_checkpoint_leftover(world, tmp_path):
    """A SIGKILL while ``last.pt`` is written leaves ``last.<pid>.partial.pt``; the next train in
    that folder removes it."""
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    stale = run / "ckpt" / f"last.{_dead_pid()}.partial.pt"
    stale.write_bytes(b"half a checkpoint")
    done = subprocess.run([sys.executable, "-m", "featvlr.cli", *map(str, _train_args(world, run, 1))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (run / "ckpt" / "last.pt").exists()
    _no_partial(run)


# -- DDP: a failure on one rank ends every rank with the error --------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method, failing, message", [
    ("vse_fails_in_eval", 0, "evaluation failed on purpose"),
    ("vse_fails_in_step", 1, "step failed on purpose"),
], ids=["rank0-in-evaluation", "rank1-in-a-step"])
def test_a_failing_rank_ends_every_rank(world, tmp_path, method, failing, message):
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import ddp_faults; from featvlr.cli import main; main()"
    port = _free_port()
    args = ["train", "-c", world.vse, *[x for o in [*QUICK, "train.epochs=3", "train.eval_every=1",
                                                    f"method={method}"] for x in ("--set", o)], "-o", tmp_path / "run"]
    procs = [_popen(*args, cwd=tmp_path, code=code, env={"WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for r in range(2)]
    t0 = time.monotonic()
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a rank hung")
        results.append((proc.returncode, err))
    assert time.monotonic() - t0 < 120
    for rank, (status, err) in enumerate(results):
        assert status == 2, (rank, err)
        last = err.strip().splitlines()[-1]
        want = f"featvlr: error: {message}" if rank == failing else f"featvlr: error: rank {failing} failed: {message}"
        assert last == want, (rank, err)
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: nothing left
