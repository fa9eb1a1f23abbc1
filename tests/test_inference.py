"""featvlr.load and search: raw captions through the head equal the cached features through it;
search lists rank as the evaluation does (embeddings, GLS shortlist then re-rank, composed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import write_synthetic_cache
from test_extract_precomp import make_precomp
from test_mlcl import make_method, write_composed_cache

from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.composed import cirr_submission
from featvlr.evaluation.evaluators import CrossModalEvaluator
from featvlr.evaluation.methods import save_query_ranks
from featvlr.evaluation.options import EvalOptions
from featvlr.inference import RetrievalModel, rank_queries
from featvlr.methods import create_method
from featvlr.methods.base import FeatureDims
from featvlr.retrieval import ranks_from_topk


@pytest.fixture(scope="module")
def vse_run(tmp_path_factory, text_encoder):
    """A tiny precomp cache through all-MiniLM-L6-v2 and a vse run trained on it briefly."""
    from featvlr.extract.precomp import extract_precomp
    from featvlr.training.trainer import train

    root = tmp_path_factory.mktemp("infer")
    make_precomp(root / "data", splits=(("train", 12), ("dev", 4), ("test", 10)), regions=4, dim=8)
    cache = extract_precomp(root / "data", root / "c.h5", text_model=text_encoder, dtype="float32", progress=False)
    cfg = load_config(None, ["method=vse", f"data.cache={cache}", "data.dataset=tiny", "model.embed_dim=16",
                             "train.epochs=1", "train.batch_size=16", "train.progress=false",
                             "eval.scenarios=[i2t, t2i]"])
    train(cfg, root / "run")
    return root / "run", cache


def _direct_model(method, cfg, cache, tmp_path) -> RetrievalModel:
    ckpt = tmp_path / "ckpt" / "best.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"stand-in: the index key stats this file")
    return RetrievalModel(method.eval(), cfg, checkpoint=ckpt, cache=cache, device=torch.device("cpu"))


def _rank_of_truth(rows: torch.Tensor, positives) -> torch.Tensor:
    return ranks_from_topk(rows, positives)


def test_encode_texts_equals_cached_features_through_the_head(vse_run):
    import featvlr
    from featvlr.data import iter_text_batches

    model = featvlr.load(vse_run[0], device="cpu")
    split = model.split("test")
    captions = split.raw_captions()
    got = model.encode_texts(captions)
    with torch.no_grad():
        want = torch.cat([model.method.encode_texts(b) for b in iter_text_batches(split, 7)])
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    # images: cache rows and the same features given as arrays agree
    rows = [3, 0, 7]
    a = model.encode_images(rows)
    b = model.encode_images(regions=split.regions(np.array(rows)), lengths=split.region_lengths(np.array(rows)))
    assert torch.allclose(a, b, atol=1e-6)


def test_search_ranks_equal_the_evaluation(vse_run, tmp_path):
    import featvlr

    model = featvlr.load(vse_run[0], device="cpu")
    split = model.split("test")
    n_img, n_txt = split.n_images, split.n_texts
    txt2img = split.image_index()
    _, t2i_rows = rank_queries(model, "t2i", rows=np.arange(n_txt), k=n_img)
    _, i2t_rows = rank_queries(model, "i2t", rows=np.arange(n_img), k=n_txt)
    saved = np.load(save_query_ranks(model.method, split, EvalOptions(), "cpu", tmp_path / "r.npz"))
    assert np.array_equal(_rank_of_truth(t2i_rows, txt2img).numpy(), saved["t2i"])
    groups = [np.nonzero(txt2img == i)[0] for i in range(n_img)]
    assert np.array_equal(_rank_of_truth(i2t_rows, np.stack(groups)).numpy(), saved["i2t"])
    # a raw caption searched through the CLI path lists the same images as its cached row
    rec = model.search(split.raw_captions()[4], k=n_img)
    assert [h["row"] for h in rec["results"]["t2i"]] == t2i_rows[4].tolist()
    assert (vse_run[0] / "index" / "test.pt").exists()


def test_index_is_reused_and_rebuilt_when_the_checkpoint_changes(vse_run):
    import featvlr

    run = vse_run[0]
    first = featvlr.load(run, device="cpu").index("test")
    again = featvlr.load(run, device="cpu").index("test")
    assert not again.built and torch.equal(first.images, again.images)
    ckpt = run / "ckpt" / "best.pt"
    import os

    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert featvlr.load(run, device="cpu").index("test").built


def test_faiss_flat_equals_exact_and_i2i_leaves_the_query_out(vse_run):
    pytest.importorskip("faiss")
    import featvlr

    model = featvlr.load(vse_run[0], device="cpu")
    n = model.split("test").n_images
    for scenario in ("t2i", "i2t", "i2i"):
        rows = np.arange(n)
        s1, r1 = rank_queries(model, scenario, rows=rows, k=5)
        s2, r2 = rank_queries(model, scenario, rows=rows, k=5, backend="faiss-flat")
        assert torch.equal(r1, r2), scenario
        assert torch.allclose(s1, s2, atol=1e-5)
    _, r = rank_queries(model, "i2i", rows=np.arange(n), k=n)
    assert not (r == torch.arange(n)[:, None]).any() and (r[:, -1] == -1).all()


@pytest.mark.parametrize("mode", ["GL", "L"])
def test_gls_search_equals_the_evaluation(tmp_path, mode):
    cache = write_synthetic_cache(tmp_path / "syn.h5", n_images=(8, 8, 24))
    cfg = load_config(None, ["method=gls", f"data.cache={cache}", "data.dataset=synthetic", "model.embed_dim=16",
                             "model.layers=1", "model.heads=2", "model.ff_dim=32", "model.stage=2",
                             "model.drop_last_wordpiece=false",
                             f"model.eval_mode={mode}", "model.shortlist_i2t=9", "model.shortlist_t2i=4"])
    split = FeatureStore(cache).split("test")
    dims = FeatureDims(region_dim=split.region_dim, n_regions=split.n_regions, text_dim=split.text_dim)
    torch.manual_seed(0)
    method = create_method(cfg, dims=dims)
    method.stage1_ready.fill_(True)
    model = _direct_model(method, cfg, cache, tmp_path)
    ks = (1, 5, 10)
    metrics = CrossModalEvaluator(split, EvalOptions(ks=ks), ["i2t", "t2i"])(method)
    txt2img = split.image_index()
    _, t2i = rank_queries(model, "t2i", rows=np.arange(split.n_texts), k=10)
    _, i2t = rank_queries(model, "i2t", rows=np.arange(split.n_images), k=10)
    groups = np.stack([np.nonzero(txt2img == i)[0] for i in range(split.n_images)])
    r_t2i, r_i2t = _rank_of_truth(t2i, txt2img), _rank_of_truth(i2t, groups)
    for k in ks:
        assert metrics[f"t2i/R@{k}"] == pytest.approx(100 * float((r_t2i < k).float().mean()))
        assert metrics[f"i2t/R@{k}"] == pytest.approx(100 * float((r_i2t < k).float().mean()))
    if mode == "GL":  # nothing beyond the shortlist is listed
        assert ((t2i >= 0).sum(1) == 4).all()
        assert rank_queries(model, "i2i", rows=[0], k=3)[1].shape == (1, 3)  # global embeddings
    else:
        with pytest.raises(FeatvlrError, match="pairs only"):
            rank_queries(model, "i2i", rows=[0], k=3)


def test_composed_search_equals_the_composed_evaluation_top_k(tmp_path):
    cache = write_composed_cache(tmp_path / "toy.h5")
    cfg = load_config(None, ["method=combiner", f"data.cache={cache}", "data.dataset=cirr",
                             "model.projection_dim=32", "model.hidden_dim=48"])
    method = make_method("combiner", cache)
    model = _direct_model(method, cfg, cache, tmp_path)
    split = model.split("test1")
    q = split.composed()
    from featvlr.evaluation.embed import embed_composed_split

    queries, gallery = embed_composed_split(method, split)
    recall, _ = cirr_submission(queries, gallery, q, split.image_ids())
    _, rows = rank_queries(model, "composed", split="test1", queries=queries, k=50,
                           exclude=torch.as_tensor(q["reference"]))
    ids = split.image_ids()
    for i, pid in enumerate(q["pair_ids"].tolist()):
        assert [ids[r] for r in rows[i].tolist() if r >= 0] == recall[str(pid)][:50]
    # the same queries encoded from (reference, cached modifier features) agree
    with torch.no_grad():
        batch = {"reference_image": torch.as_tensor(split.global_features(q["reference"][:3])),
                 "pooled_text": torch.as_tensor(split.pooled(np.arange(3)))}
        assert torch.allclose(method.encode_queries(batch), queries[:3], atol=1e-6)
