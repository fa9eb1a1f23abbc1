"""Embedding geometry diagnostics, the collapse warning and the never-active-term warning."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic import write_synthetic_cache

from featvlr.config import load_config
from featvlr.evaluation.geometry import collapse_warning, embedding_geometry, mean_pairwise_cosine
from featvlr.training.notes import run_warnings
from featvlr.training.trainer import train


def test_mean_pairwise_cosine_matches_the_full_matrix():
    x = F.normalize(torch.randn(37, 9, generator=torch.Generator().manual_seed(0)), dim=1)
    full = x @ x.t()
    naive = (full.sum() - full.diag().sum()) / (37 * 36)
    assert mean_pairwise_cosine(x) == pytest.approx(float(naive), abs=1e-6)


def test_geometry_of_a_collapsed_and_of_a_separated_space():
    n = 6
    same = F.normalize(torch.ones(n, 4), dim=1)
    txt2img = torch.arange(n).repeat_interleave(2)
    g = embedding_geometry(same, same.repeat_interleave(2, 0), txt2img)
    assert g["geometry/img_cos"] == pytest.approx(1.0) and g["geometry/tied"] == pytest.approx(1.0)
    assert g["geometry/gap"] == pytest.approx(0.0, abs=1e-6)
    assert "collapsed" in collapse_warning(g)
    eye = torch.eye(n)
    g = embedding_geometry(eye, eye.repeat_interleave(2, 0), txt2img, block=4)
    assert g["geometry/img_cos"] == pytest.approx(0.0) and g["geometry/tied"] == 0.0
    assert g["geometry/gap"] == pytest.approx(1.0)  # positives 1, every negative 0
    assert collapse_warning(g) is None


def test_hand_computed_gap_in_one_block():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)  # caption 0 is as close to image 1
    g = embedding_geometry(img, txt, torch.tensor([0, 1]))
    s = 2 ** -0.5
    # image anchors: 0: s - 0 ; 1: 1 - s.  caption anchors: 0: s - s = 0 (tied) ; 1: 1 - 0
    assert g["geometry/gap"] == pytest.approx((s + (1 - s) + 0 + 1) / 4)
    assert g["geometry/tied"] == pytest.approx(0.25)


def test_run_warnings_names_a_term_that_never_acted():
    out = run_warnings({"contrastive_loss": True, "graph_loss": False, "graph_on": False}, {}, "dev", 12)
    assert len(out) == 2 and out[0].startswith("graph_loss was zero at every one of the run's 12 steps")


@pytest.fixture(scope="module")
def signal_free_cache(tmp_path_factory) -> Path:
    # captions carry no information about their images: no ranking beats the hardest negative,
    # and the hardest-negative hinge's best answer is to put everything in one place
    return write_synthetic_cache(tmp_path_factory.mktemp("c") / "noise.h5", noise=50.0, n_images=(128, 32, 32))


def test_a_collapsing_run_says_so(signal_free_cache, tmp_path):
    cfg = load_config(None, [f"data.cache={signal_free_cache}", "data.dataset=synthetic", "model.embed_dim=16",
                             "train.epochs=6", "train.batch_size=64", "train.progress=false", "train.lr=5e-3",
                             "loss.warmup_epochs=0", "eval.dev_scenarios=[i2t, t2i]", "eval.scenarios=[i2t, t2i]"])
    result = train(cfg, tmp_path / "run")
    assert any("collapsed" in w for w in result.warnings), result.best_metrics
    record = json.loads((tmp_path / "run" / "eval" / "test.json").read_text())
    assert any("collapsed" in w for w in record["warnings"])
    assert record["metrics"]["geometry/img_cos"] > 0.8 or record["metrics"]["geometry/txt_cos"] > 0.8
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "warning" and "collapsed" in e["message"] for e in events)
    epochs = [e for e in events if e.get("event") == "epoch"]
    assert all("dev/geometry/img_cos" in e for e in epochs)


def test_a_healthy_run_has_no_warning(tmp_path):
    cache = write_synthetic_cache(tmp_path / "syn.h5")
    cfg = load_config(None, [f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=32",
                             "train.epochs=3", "train.batch_size=32", "train.progress=false",
                             "eval.dev_scenarios=[i2t, t2i]", "eval.scenarios=[i2t, t2i]"])
    result = train(cfg, tmp_path / "run")
    assert result.warnings == []
    record = json.loads((tmp_path / "run" / "eval" / "test.json").read_text())
    assert "warnings" not in record and record["metrics"]["geometry/img_cos"] < 0.8
