"""A run folder describes its own checkpoints: refused re-runs, logged resumes, config hashes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import write_synthetic_cache

from featvlr.config import load_config
from featvlr.config.provenance import config_differences, config_hash
from featvlr.core.checkpoint import load_checkpoint
from featvlr.core.errors import InputError
from featvlr.training.trainer import train


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("cache") / "syn.h5", n_images=(32, 8, 8))


def quick(cache: Path, *extra: str, epochs: int = 1):
    return load_config(None, [f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=16",
                              f"train.epochs={epochs}", "train.batch_size=32", "train.progress=false",
                              "train.eval_every=0", "data.test_split=", *extra])


def test_config_hash_and_differences():
    a, b = load_config(None, []), load_config(None, ["train.lr=3e-4"])
    assert config_hash(a) == config_hash(load_config(None, [])) != config_hash(b)
    assert config_differences(a, b) == {"train.lr": (a.train.lr, 3e-4)}


def test_a_rerun_with_another_config_is_refused(cache, tmp_path):
    run = tmp_path / "r"
    (run).mkdir()
    train(quick(cache), run)
    (run / "ckpt" / "last.pt").unlink()  # even without a checkpoint, config.yaml decides
    with pytest.raises(InputError, match=r"train\.lr: 0\.0005 -> 0\.0003.*another --out"):
        train(quick(cache, "train.lr=3e-4"), run)
    train(quick(cache), run)  # the same config may start again


def test_resume_with_more_epochs_is_allowed_and_logged(cache, tmp_path):
    run = tmp_path / "r"
    train(quick(cache), run)
    train(quick(cache, epochs=2), run, resume=True)
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resume"]
    assert resumed and resumed[0]["epoch"] == 1 and resumed[0]["changed"] == {"train.epochs": [1, 2]}
    ckpt = load_checkpoint(run / "ckpt" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config_sha256"] == config_hash(quick(cache, epochs=2))
    with pytest.raises(InputError, match="has done 2 epochs"):
        train(quick(cache, epochs=1), run, resume=True)
    with pytest.raises(InputError, match=r"model\.embed_dim"):
        train(quick(cache, "model.embed_dim=8", epochs=3), run, resume=True)


def test_resume_with_another_method_names_it(cache, tmp_path):
    run = tmp_path / "r"
    train(quick(cache), run)
    with pytest.raises(InputError, match="'vse' run, the config asks for 'hrem'"):
        train(quick(cache, "method=hrem"), run, resume=True)
