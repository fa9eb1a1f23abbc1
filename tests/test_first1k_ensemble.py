"""COCO first-1K (RVLR/CoVLR) and ensembles of runs (VSE-infinity/HREM), against naive
full-matrix loops."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from synthetic import write_tiny_cache

from featvlr.evaluation.cross_modal import evaluate_cross_modal, first_suffix
from featvlr.evaluation.ensemble import mean_sims
from featvlr.evaluation.options import EvalOptions, protocol_first_images


def naive_recall(sims: np.ndarray, txt2img: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """i2t and t2i R@K, medr, meanr by sorting every query's full row (pessimistic ties)."""
    n_img, n_txt = sims.shape
    out: dict[str, float] = {}
    i2t, t2i = [], []
    for i in range(n_img):
        pos = np.nonzero(txt2img == i)[0]
        if len(pos) == 0:
            continue
        best = sims[i, pos].max()
        i2t.append(int(np.sum(np.delete(sims[i], pos) >= best)))
    for c in range(n_txt):
        gt = txt2img[c]
        t2i.append(int(np.sum(np.delete(sims[:, c], gt) >= sims[gt, c])))
    for d, r in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in ks:
            out[f"{d}/R@{k}"] = 100.0 * np.mean(r < k)
        out[f"{d}/medr"] = math.floor(np.median(r)) + 1
        out[f"{d}/meanr"] = r.mean() + 1
    out["rsum"] = sum(out[f"{d}/R@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def _with_suffix(metrics: dict[str, float], sfx: str) -> dict[str, float]:
    return {(f"{k.split('/')[0]}{sfx}/{k.split('/')[1]}" if "/" in k else f"{k}{sfx}"): v for k, v in metrics.items()}


def test_first_block_names():
    assert first_suffix(1000) == "_first1k" and first_suffix(2000) == "_first2k" and first_suffix(300) == "_first300"


def test_first_images_rule_is_coco_test_protocol():
    coco = type("C", (), {"data": type("D", (), {"dataset": "coco"})(), "eval": None})()
    f30k = type("C", (), {"data": type("D", (), {"dataset": "f30k"})(), "eval": None})()
    assert protocol_first_images(coco) == 1000 and protocol_first_images(coco, final=False) == 0
    assert protocol_first_images(f30k) == 0
    assert EvalOptions.from_config(coco).first_images == 1000 and EvalOptions.from_config(coco).folds == (1, 5)
    assert EvalOptions.from_config(coco, first_images=0).first_images == 0


def test_coco_first1k_against_naive_loops():
    """2,000 images x 5 captions with a shuffled caption order: the first 1,000 images and
    their texts form the block, next to the whole split and the 5-fold mean."""
    rng = np.random.default_rng(0)
    n_img = 2000
    txt2img = rng.permutation(np.repeat(np.arange(n_img), 5))
    img = rng.normal(size=(n_img, 6)).astype(np.float32)
    txt = (img[txt2img] + 1.5 * rng.normal(size=(5 * n_img, 6))).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    got = evaluate_cross_modal(torch.from_numpy(img), torch.from_numpy(txt), {"txt2img": txt2img}, ["i2t", "t2i"],
                               (1, 5), first_images=1000)
    keep = np.nonzero(txt2img < 1000)[0]
    sims = img @ txt.T
    want = _with_suffix(naive_recall(sims[:1000][:, keep], txt2img[keep]), "_first1k")
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    whole = naive_recall(sims, txt2img)
    assert got["i2t/R@1"] == pytest.approx(whole["i2t/R@1"]) and "i2t_5fold/R@1" in got
    assert got["r_mean_first1k"] == pytest.approx(got["rsum_first1k"] / 6)


def test_first_block_on_a_matrix_with_teran_ndcg_and_uni_modal():
    rng = np.random.default_rng(1)
    n_img = 12
    txt2img = np.repeat(np.arange(n_img), 5)
    img = rng.normal(size=(n_img, 5)).astype(np.float32)
    txt = rng.normal(size=(5 * n_img, 5)).astype(np.float32)
    R = rng.random((5 * n_img, n_img)).astype(np.float32)
    sims = img @ txt.T
    got = evaluate_cross_modal(None, None, {"txt2img": txt2img, "relevance": R}, ["i2t", "t2i"], sims=sims,
                               teran_ndcg=True, first_images=8)
    sub = evaluate_cross_modal(None, None, {"txt2img": txt2img[:40], "relevance": R[:40, :8]}, ["i2t", "t2i"],
                               sims=sims[:8, :40], teran_ndcg=True)
    assert got == pytest.approx({**{k: v for k, v in got.items() if "_first8" not in k},
                                 **_with_suffix(sub, "_first8")})
    for key, value in _with_suffix(naive_recall(sims[:8, :40], txt2img[:40]), "_first8").items():
        assert got[key] == pytest.approx(value), key
    uni = evaluate_cross_modal(img, txt, {"txt2img": txt2img, "relevance": R}, ["i2i", "t2t", "i2it", "t2it"],
                               first_images=8)
    uni_sub = evaluate_cross_modal(img[:8], txt[:40], {"txt2img": txt2img[:40], "relevance": R[:40, :8]},
                                   ["i2i", "t2t", "i2it", "t2it"])
    assert {k: v for k, v in uni.items() if "_first8" in k} == pytest.approx(_with_suffix(uni_sub, "_first8"))
    assert not any("_first" in k for k in evaluate_cross_modal(img, txt, {"txt2img": txt2img}, first_images=13))


def test_mean_sims():
    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=(3, 15)).astype(np.float32) for _ in range(3))
    assert torch.equal(mean_sims([a, b]), (torch.from_numpy(a) + torch.from_numpy(b)) / 2)
    np.testing.assert_allclose(mean_sims([a, b, c]).numpy(), (a + b + c) / 3, rtol=1e-6)
    with pytest.raises(Exception, match="same split"):
        mean_sims([a, a[:2]])


def _vse_run(path, cache, seed, d):
    from featvlr.config import config_from_dict, config_to_dict
    from featvlr.core.checkpoint import save_checkpoint
    from featvlr.methods.base import FeatureDims
    from featvlr.methods.registry import create_method

    cfg = config_from_dict({"method": "vse", "data": {"cache": str(cache)},
                            "model": {"embed_dim": 8, "pooling": "mean"}, "train": {"seed": seed}})
    dims = FeatureDims(region_dim=d, n_regions=3, text_dim=d)
    torch.manual_seed(seed)
    method = create_method(cfg, dims=dims)
    save_checkpoint(path / "ckpt" / "best.pt", {"config": config_to_dict(cfg), "dims": dataclasses.asdict(dims),
                                                "model": method.state_dict()})
    method.eval()
    return method


def test_ensemble_of_two_runs(tmp_path, cli):
    from featvlr.cache.store import FeatureStore
    from featvlr.evaluation.embed import embed_split

    cache = write_tiny_cache(tmp_path / "tiny.h5", n_img=10, per=5, d=4, rng=0)
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    methods = [_vse_run(r, cache, seed, 4) for r, seed in zip(runs, (1, 2))]
    st = FeatureStore(cache).split("test")
    sims = []
    with torch.no_grad():
        for m in methods:
            i, t = embed_split(m, st)
            sims.append(i.numpy().astype(np.float64) @ t.numpy().astype(np.float64).T)
    mean = (sims[0] + sims[1]) / 2
    out = tmp_path / "ens.json"
    code, stdout, err = cli("eval", *runs, "--split", "test", "--json", out, "--no-plots")
    assert code == 0, err
    assert "ensemble of" in stdout
    rec = json.loads(out.read_text())
    assert rec["input"]["kind"] == "ensemble" and [m["path"] for m in rec["input"]["members"]] == [str(r) for r in runs]
    assert [m["seed"] for m in rec["input"]["members"]] == [1, 2]
    want = naive_recall(mean, st.image_index())
    for key, value in want.items():
        assert rec["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert "i2t/ndcg_exp@25" in rec["metrics"]                         # TERAN NDCG with the cache's relevance
    for m, s in zip(rec["input"]["members"], sims):                    # each member's own metrics, recorded
        for key, value in naive_recall(s, st.image_index()).items():
            assert m["metrics"][key] == pytest.approx(value, abs=1e-6), key
    code, _, err = cli("eval", *runs, "--split", "test", "--scenarios", "i2i", "--json", out)
    assert code != 0 and "i2t and t2i only" in err
