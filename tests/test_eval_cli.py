"""`featvlr eval` through the command line: embeddings, similarity matrices, runs, bad input."""
from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
from synthetic import write_tiny_cache

from featvlr.cache.store import CacheWriter
from featvlr.retrieval.metrics import cross_modal_recall

N_IMG, PER, D = 10, 5, 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    rng = np.random.default_rng(0)
    n_txt = N_IMG * PER
    cache = write_tiny_cache(root / "tiny.h5", n_img=N_IMG, per=PER, d=D, rng=rng)
    with h5py.File(cache, "r") as f:
        rel = f["relevance/test/rougeL"][()]
    img = rng.normal(size=(N_IMG, 8)).astype(np.float32)
    txt = (np.repeat(img, PER, axis=0) + rng.normal(size=(n_txt, 8))).astype(np.float32)
    np.savez(root / "emb.npz", images=img, texts=txt)
    np.save(root / "sims.npy", img @ txt.T)
    np.save(root / "rel.npy", rel)
    rel.tofile(root / "rel_raw.npy")  # TERAN's headerless float32 layout
    return {"root": root, "cache": cache, "img": img, "txt": txt, "rel": rel}


def test_embeddings_with_cache(files, cli):
    root = files["root"]
    out = root / "out" / "emb.json"
    code, stdout, err = cli("eval", "--embeddings", root / "emb.npz", "--cache", files["cache"], "--split",
                            "test", "--json", out, "--folds", "1,5", "--t2t-without-siblings")
    assert code == 0, err
    rec = json.loads(out.read_text())
    m = rec["metrics"]
    ref = cross_modal_recall(files["img"] @ files["txt"].T)
    assert m["i2t/R@1"] == pytest.approx(ref["i2t_R@1"]) and m["rsum"] == pytest.approx(ref["rsum"])
    assert {"i2i/ndcg_lin@10", "t2t/ndcg_exp@25", "t2t_nosiblings/ndcg_lin@20", "i2it/ndcg_lin@50",
            "t2it/ndcg_lin@10", "i2t/ndcg_exp@25", "i2t_5fold/R@1", "rsum_5fold"} <= set(m)
    assert rec["protocol"]["folds"] == [1, 5] and rec["protocol"]["split"] == "test"
    assert set(rec["versions"]) >= {"featvlr", "torch", "numpy"} and rec["time_s"] >= 0
    assert rec["device"].startswith("cpu")
    assert (root / "out" / "emb_recall.png").stat().st_size > 0
    assert (root / "out" / "emb_scenarios.png").stat().st_size > 0
    assert "i2t" in stdout and "rsum" in stdout


def test_sims_subprocess(files, cli_process):
    """A fresh interpreter (as is test_bad_input_subprocess); the other CLI tests call the same
    entry point, ``featvlr.cli.main``, in-process."""
    root = files["root"]
    p = cli_process("eval", "--sims", root / "sims.npy", "--json", root / "s.json", "--no-plots", cwd=root)
    assert p.returncode == 0, p.stderr
    m = json.loads((root / "s.json").read_text())["metrics"]
    assert m["t2i/R@5"] == pytest.approx(cross_modal_recall(files["img"] @ files["txt"].T)["t2i_R@5"])
    assert "t2i" in p.stdout


def test_bad_input_subprocess(files, cli_process):
    root = files["root"]
    p = cli_process("eval", "--sims", root / "sims.npy", "--scenarios", "t2t", cwd=root)
    assert p.returncode == 2
    assert p.stderr.startswith("featvlr: error:") and "needs embeddings" in p.stderr and "Traceback" not in p.stderr


def test_sims_with_relevance_file_and_raw_memmap(files, cli):
    root = files["root"]
    a = cli("eval", "--sims", root / "sims.npy", "--relevance", root / "rel.npy", "--json", root / "a.json",
            "--no-plots")
    b = cli("eval", "--sims", root / "sims.npy", "--relevance", root / "rel_raw.npy", "--json",
            root / "b.json", "--no-plots", "--scenarios", "i2t,t2i")
    assert a[0] == 0 and b[0] == 0, a[2] + b[2]
    ma, mb = json.loads((root / "a.json").read_text())["metrics"], json.loads((root / "b.json").read_text())["metrics"]
    assert ma == mb and "t2i/ndcg_exp@25" in ma
    assert not (root / "a_recall.png").exists()
    emb_path = root / "out" / "emb.json"
    emb = json.loads(emb_path.read_text())["metrics"] if emb_path.exists() else None
    if emb is not None:
        assert ma["i2t/ndcg_exp@25"] == pytest.approx(emb["i2t/ndcg_exp@25"])


def test_relevance_file_read_like_extract(files, cli):
    """--relevance goes through featvlr.retrieval.relevance.load_relevance: a flat float .npy is the same
    matrix; an integer .npy is refused."""
    root = files["root"]
    np.save(root / "rel_flat.npy", files["rel"].ravel())
    np.save(root / "rel_int.npy", (files["rel"] * 10).astype(np.int64))
    a = cli("eval", "--sims", root / "sims.npy", "--relevance", root / "rel.npy", "--json", root / "r2d.json",
            "--no-plots")
    b = cli("eval", "--sims", root / "sims.npy", "--relevance", root / "rel_flat.npy", "--json",
            root / "rflat.json", "--no-plots")
    assert a[0] == 0 and b[0] == 0, a[2] + b[2]
    ma, mb = (json.loads((root / n).read_text())["metrics"] for n in ("r2d.json", "rflat.json"))
    assert ma == mb and "i2t/ndcg_exp@25" in mb
    code, _, err = cli("eval", "--sims", root / "sims.npy", "--relevance", root / "rel_int.npy", "--json",
                       root / "rint.json", "--no-plots")
    assert code == 2 and "floating point" in err


def test_checkpoint_run(files, tmp_path, cli):
    import torch

    from featvlr.config import config_from_dict, config_to_dict
    from featvlr.core.checkpoint import save_checkpoint
    from featvlr.methods.base import FeatureDims
    from featvlr.methods.registry import create_method

    cfg = config_from_dict({"method": "vse", "data": {"cache": str(files["cache"])},
                            "model": {"embed_dim": 8, "pooling": "mean"}, "train": {"seed": 3}})
    dims = FeatureDims(region_dim=D, n_regions=3, text_dim=D)
    method = create_method(cfg, dims=dims)
    run = tmp_path / "run"
    save_checkpoint(run / "ckpt" / "best.pt", {"config": config_to_dict(cfg), "dims": dataclasses.asdict(dims),
                                               "model": method.state_dict()})
    code, _, err = cli("eval", run, "--split", "test", "--scenarios", "i2t,t2i,i2i")
    assert code == 0, err
    rec = json.loads((run / "eval" / "test.json").read_text())
    assert rec["seed"] == 3 and rec["config"]["method"] == "vse" and rec["input"]["kind"] == "checkpoint"
    assert {"i2t/R@1", "t2i/meanr", "i2i/ndcg_lin@10", "rsum"} <= set(rec["metrics"])
    assert not any(k.startswith("t2t") for k in rec["metrics"])
    del torch


@pytest.mark.parametrize("case, message", [
    ("shape", "but split 'test' of the cache has 10 and 50"),
    ("nan", "NaN"),
    ("scenario", "unknown scenario 'x2y'"),
    ("relsize", "relevance"),
    ("sims_uni", "needs embeddings"),
    ("missing", "no such file"),
])
def test_bad_input_exit_2(files, cli, case, message):
    root = files["root"]
    bad = root / f"bad_{case}"
    bad.mkdir(exist_ok=True)
    if case == "shape":
        np.savez(bad / "e.npz", images=files["img"][:9], texts=files["txt"][:45])
        args = ["--embeddings", bad / "e.npz", "--cache", files["cache"]]
    elif case == "nan":
        s = files["img"] @ files["txt"].T
        s[2, 3] = np.nan
        np.save(bad / "s.npy", s)
        args = ["--sims", bad / "s.npy"]
    elif case == "scenario":
        args = ["--sims", root / "sims.npy", "--scenarios", "i2t,x2y"]
    elif case == "relsize":
        np.save(bad / "r.npy", files["rel"][:, :9])
        args = ["--sims", root / "sims.npy", "--relevance", bad / "r.npy"]
    elif case == "sims_uni":
        args = ["--sims", root / "sims.npy", "--cache", files["cache"], "--scenarios", "i2i"]
    else:
        args = ["--embeddings", bad / "nothing.npz"]
    code, out, err = cli("eval", *args, "--json", bad / "out.json")
    assert code == 2, (out, err)
    assert message in err and err.startswith("featvlr: error:") and err.count("\n") == 1


def test_composed_embeddings_and_cirr_submission(tmp_path, cli):
    from featvlr.retrieval.metrics import composed_recall

    rng = np.random.default_rng(1)
    n_img, q = 60, 8
    cache = tmp_path / "cirr.h5"
    ref = rng.integers(0, n_img, size=q)
    tgt = (ref + 1 + rng.integers(0, n_img - 1, size=q)) % n_img
    subsets = np.stack([np.concatenate([[ref[i], tgt[i]], (tgt[i] + np.arange(1, 5)) % n_img]) for i in range(q)])
    with CacheWriter(cache) as w:
        for split, target in (("val", tgt), ("test1", np.full(q, -1))):
            w.write(f"images/{split}/global", rng.normal(size=(n_img, 4)).astype(np.float32))
            w.write(f"images/{split}/ids", [f"{split}-{i}" for i in range(n_img)])
            w.write(f"texts/{split}/pooled", rng.normal(size=(q, 4)).astype(np.float32))
            w.write(f"texts/{split}/offsets", np.zeros(q + 1, dtype=np.int64))
            w.write(f"texts/{split}/image_index", np.full(q, -1, dtype=np.int64))
            w.write(f"composed/{split}/reference", ref)
            w.write(f"composed/{split}/target", target)
            w.write(f"composed/{split}/subsets", subsets)
            w.write(f"composed/{split}/pair_ids", np.arange(q))
    qe, ge = rng.normal(size=(q, 6)).astype(np.float32), rng.normal(size=(n_img, 6)).astype(np.float32)
    np.savez(tmp_path / "comp.npz", queries=qe, gallery=ge)
    code, _, err = cli("eval", "--embeddings", tmp_path / "comp.npz", "--cache", cache, "--split", "val",
                       "--json", tmp_path / "val.json", "--no-plots")
    assert code == 0, err
    m = json.loads((tmp_path / "val.json").read_text())["metrics"]
    expect = composed_recall(qe @ ge.T, tgt, reference=ref, subsets=subsets)
    assert m["composed/R@5"] == pytest.approx(expect["R@5"])
    assert m["composed/Rsubset@1"] == pytest.approx(expect["Rsubset@1"])
    code, _, err = cli("eval", "--embeddings", tmp_path / "comp.npz", "--cache", cache, "--split", "test1",
                       "--json", tmp_path / "sub" / "test1.json", "--no-plots")
    assert code == 0, err
    rec = json.loads((tmp_path / "sub" / "test1.json").read_text())
    assert rec["metrics"] == {} and len(rec["submission"]) == 2
    recall = json.loads((tmp_path / "sub" / "recall_submission_test1.json").read_text())
    subset = json.loads((tmp_path / "sub" / "recall_subset_submission_test1.json").read_text())
    assert recall["version"] == "rc2" and set(recall) == {"version", "metric"} | {str(i) for i in range(q)}
    assert len(recall["0"]) == 50 and f"test1-{ref[0]}" not in recall["0"] and len(subset["3"]) == 3


@pytest.mark.parametrize("value", ["-1", "-5"])
def test_negative_examples_is_refused_before_any_work(files, tmp_path, cli, value):
    """`--examples -1` is one line naming --examples, exit 2, before anything is evaluated or written."""
    from featvlr.config import config_from_dict, config_to_dict
    from featvlr.core.checkpoint import save_checkpoint
    from featvlr.methods.base import FeatureDims
    from featvlr.methods.registry import create_method

    cfg = config_from_dict({"method": "vse", "data": {"cache": str(files["cache"])},
                            "model": {"embed_dim": 8, "pooling": "mean"}})
    dims = FeatureDims(region_dim=D, n_regions=3, text_dim=D)
    run = tmp_path / "run"
    save_checkpoint(run / "ckpt" / "best.pt", {"config": config_to_dict(cfg), "dims": dataclasses.asdict(dims),
                                               "model": create_method(cfg, dims=dims).state_dict()})
    code, out, err = cli("eval", run, "--examples", value)
    assert code == 2, (out, err)
    assert err == f"featvlr: error: --examples: expected >= 0, got {value}\n"
    assert out == "" and not (run / "eval").exists()
