"""Combiner, MLCL losses and method, composed batches, composed evaluation, CIRR submission."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.config import config_from_dict, load_config
from featvlr.core.errors import ConfigError, FeatvlrError, InputError
from featvlr.data.composed import ComposedBatches, iter_query_batches, read_queries
from featvlr.evaluation.composed import evaluate_composed_method, resolve_composed_protocol
from featvlr.losses.mlcl import ComposedContrastiveLoss, MultiLevelContrastiveLoss, in_batch_cross_entropy
from featvlr.methods import StepState, create_method
from featvlr.methods.base import FeatureDims
from featvlr.modules.combiner import Combiner, MultiLevelCombiner
from featvlr.retrieval.metrics import composed_recall

# --------------------------------------------------------------------------------------
# a tiny learnable composed cache (CIRR layout): target = reference + the edit the text states


def write_composed_cache(path: Path, *, n_sets=(12, 4), image_dim: int = 16, text_dim: int = 12, latent: int = 6,
                         n_aug: int = 3, seed: int = 0, fiq_categories: tuple[str, ...] = (),
                         train_variants: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((latent, image_dim))
    B = rng.standard_normal((latent, text_dim))
    splits = {"train": n_sets[0], "val": n_sets[1], "test1": 10}  # > 50 images: the top-50 list is full
    for cat in fiq_categories:
        splits[f"val_{cat}"] = n_sets[1]
    with CacheWriter(path, text_encoder="synthetic", text_dim=text_dim) as w:
        for split, n in splits.items():
            base = rng.standard_normal((n, latent))
            z = np.repeat(base, 6, axis=0) + 0.8 * rng.standard_normal((6 * n, latent))  # sets of 6
            g = z @ A + 0.05 * rng.standard_normal((6 * n, image_dim))
            aug = g[:, None, :] + 0.1 * rng.standard_normal((6 * n, n_aug, image_dim))
            ref, tgt, subsets = [], [], []
            for s in range(n):
                members = np.arange(6 * s, 6 * s + 6)
                for a in range(6):
                    for b in (a + 1, a + 3):
                        ref.append(members[a])
                        tgt.append(members[b % 6])
                        subsets.append(members)
            ref, tgt = np.array(ref), np.array(tgt)
            text = (z[tgt] - z[ref]) @ B + 0.05 * rng.standard_normal((len(ref), text_dim))
            w.write(f"images/{split}/global", g.astype(np.float32))
            w.write(f"images/{split}/global_aug", aug.astype(np.float32))
            w.write(f"images/{split}/ids", [f"{split}-img{i}" for i in range(6 * n)])
            q = len(ref)
            if split == "train" and train_variants > 1:  # FashionIQ: V caption forms, blocks of Q rows
                text = np.concatenate([text + 0.05 * rng.standard_normal(text.shape) for _ in range(train_variants)])
                w.write(f"composed/{split}/text", np.arange(q)[:, None] + q * np.arange(train_variants))
            w.write(f"texts/{split}/pooled", text.astype(np.float32))
            w.write(f"texts/{split}/offsets", np.zeros(len(text) + 1, dtype=np.int64))
            w.write(f"texts/{split}/image_index", np.full(len(text), -1, dtype=np.int64))
            w.write(f"composed/{split}/reference", ref.astype(np.int64))
            w.write(f"composed/{split}/target", (tgt if split != "test1" else np.full_like(tgt, -1)).astype(np.int64))
            w.write(f"composed/{split}/subsets", np.array(subsets, dtype=np.int64))
            w.write(f"composed/{split}/pair_ids", np.arange(len(ref), dtype=np.int64) + 1000)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_composed_cache(tmp_path_factory.mktemp("composed") / "toy.h5")


def make_method(name: str, cache: Path, **overrides):
    raw = {"method": name, "model": {"projection_dim": 32, "hidden_dim": 48}, "loss": {}}
    for key, value in overrides.items():
        section, field = key.split(".")
        raw.setdefault(section, {})[field] = value
    cfg = config_from_dict(raw)
    split = FeatureStore(cache).split("train")
    dims = FeatureDims(text_dim=split.text_dim, global_dim=split.global_features(slice(0, 1)).shape[1])
    torch.manual_seed(0)
    return create_method(cfg, dims=dims)


# --------------------------------------------------------------------------------------
# the Combiner against the formula


def _mlp(x, layer):
    return F.relu(layer(x))


def test_combiner_matches_hand_written_formula():
    torch.manual_seed(0)
    comb = Combiner(feature_dim=8, projection_dim=16, hidden_dim=24).eval()
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    t = F.relu(txt @ comb.text_projection_layer.weight.T + comb.text_projection_layer.bias)
    i = F.relu(img @ comb.image_projection_layer.weight.T + comb.image_projection_layer.bias)
    z = torch.cat([t, i], -1)
    h = F.relu(z @ comb.combiner_layer.weight.T + comb.combiner_layer.bias)
    l1, l2 = comb.dynamic_scalar[0], comb.dynamic_scalar[3]
    lam = torch.sigmoid(F.relu(z @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)
    out = h @ comb.output_layer.weight.T + comb.output_layer.bias + lam * txt + (1 - lam) * img
    assert torch.allclose(comb(img, txt), F.normalize(out, dim=-1), atol=1e-6)
    # default widths are CLIP4Cir's ratios (2560 / 5120 for d = 640)
    wide = Combiner(feature_dim=10)
    assert (wide.projection_dim, wide.hidden_dim) == (40, 80)


def test_multilevel_levels_lambda_and_branch_weight():
    torch.manual_seed(1)
    comb = MultiLevelCombiner(feature_dim=8, projection_dim=16, hidden_dim=24).eval()
    img, txt, img_aug = torch.randn(6, 8) * 3, torch.randn(6, 8) * 3, torch.randn(6, 8)
    lv = comb.levels(img, txt, img_aug)
    assert torch.all((lv.lam > 0) & (lv.lam < 1))
    assert torch.allclose(lv.low, F.normalize(img + txt, dim=-1))
    z = torch.cat([_mlp(txt, comb.text_projection_layer), _mlp(img, comb.image_projection_layer)], -1)
    h = _mlp(z, comb.combiner_layer)
    assert torch.allclose(lv.z, z, atol=1e-6)
    assert torch.allclose(lv.mid, F.normalize(comb.combiner_proj(h), dim=-1), atol=1e-6)
    assert torch.allclose(lv.high, comb.__class__.__mro__[1].forward(comb, img, txt), atol=1e-6)  # = CLIP4Cir output
    z_aug = torch.cat([_mlp(txt, comb.text_projection_layer), _mlp(img_aug, comb.image_projection_layer)], -1)
    assert torch.allclose(lv.z_aug, z_aug, atol=1e-6)
    assert torch.allclose(lv.high_aug, comb.__class__.__mro__[1].forward(comb, img_aug, txt), atol=1e-6)
    w = comb.branch_weight()
    assert math.isclose(float(w.detach()), 2 / 3, rel_tol=1e-6)
    matched = comb.combine(lv, "matched")
    swapped = comb.combine(lv, "swapped")
    assert torch.allclose(matched, F.normalize(w * lv.high + (2 - w) * lv.mid + lv.low, dim=-1))
    assert torch.allclose(swapped, F.normalize((2 - w) * lv.high + w * lv.mid + lv.low, dim=-1))


def test_training_dropout_shares_the_text_mask():
    torch.manual_seed(2)
    comb = MultiLevelCombiner(feature_dim=8, projection_dim=64, hidden_dim=24).train()
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    lv = comb.levels(img, txt, img.clone())
    p = comb.projection_dim
    assert torch.equal(lv.z[:, :p], lv.z_aug[:, :p])  # the same t' (same dropout mask)
    assert not torch.equal(lv.z[:, p:], lv.z_aug[:, p:])  # the image branch draws its own mask


# --------------------------------------------------------------------------------------
# losses


def test_in_batch_ce_and_duplicate_target_mask():
    q = F.normalize(torch.randn(4, 5), dim=-1)
    k = F.normalize(torch.randn(4, 5), dim=-1)
    want = F.cross_entropy(10 * q @ k.T, torch.arange(4))
    assert torch.allclose(in_batch_cross_entropy(q, k, 10.0), want)
    ids = torch.tensor([0, 1, 0, 2])  # rows 0 and 2 share a target
    masked = in_batch_cross_entropy(q, k, 10.0, key_ids=ids)
    logits = 10 * q @ k.T
    logits[0, 2] = logits[2, 0] = float("-inf")
    assert torch.allclose(masked, F.cross_entropy(logits, torch.arange(4)))
    loss = ComposedContrastiveLoss()
    assert math.isclose(float(loss.scale), 100.0, rel_tol=1e-5) and not list(loss.parameters())


def test_multilevel_loss_is_the_paper_formula_and_sscl_targets_are_the_diagonal():
    torch.manual_seed(3)
    comb = MultiLevelCombiner(feature_dim=8, projection_dim=16, hidden_dim=24).eval()
    img, txt, img_aug, target = (torch.randn(6, 8) for _ in range(4))
    lv = comb.levels(img, txt, img_aug)
    crit = MultiLevelContrastiveLoss()
    out = crit(lv, target, comb.branch_weight())
    y, w, lab = F.normalize(target, dim=-1), comb.branch_weight(), torch.arange(6)
    s = 100.0
    want = (w * F.cross_entropy(s * lv.high @ y.T, lab) + (2 - w) * F.cross_entropy(s * lv.mid @ y.T, lab)
            + F.cross_entropy(s * lv.low @ y.T, lab)
            + F.cross_entropy(s * F.normalize(lv.z, dim=-1) @ F.normalize(lv.z_aug, dim=-1).T, lab)
            + F.cross_entropy(s * lv.high @ lv.high_aug.T, lab))
    total = sum(v for k, v in out.items() if k.endswith("_loss"))
    assert torch.allclose(total, want.squeeze(), atol=1e-4)
    assert {"scale", "scale_sl"} <= set(out) and len(list(crit.parameters())) == 2
    # SSCL: row i's positive is column i (its own augmented view); identical views -> ~0 loss
    same = comb.levels(img, txt, img)
    sscl = crit(same, target, comb.branch_weight())
    assert float(sscl["sscl_high_loss"].detach()) < 1e-3
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    same.high_aug = same.high_aug[perm]
    assert float(crit(same, target, comb.branch_weight())["sscl_high_loss"].detach()) > 1.0
    with pytest.raises(ValueError):
        crit(comb.levels(img, txt), target, comb.branch_weight())


def test_branch_weight_gradient_moves_toward_the_lower_ce_branch():
    comb = MultiLevelCombiner(feature_dim=4, projection_dim=8, hidden_dim=8)
    crit = MultiLevelContrastiveLoss(sscl_weight=0.0, low_weight=0.0)
    y = F.normalize(torch.randn(5, 4), dim=-1)
    from featvlr.modules.combiner import CombinerLevels

    good, bad = y.clone(), F.normalize(torch.randn(5, 4), dim=-1)
    lv = CombinerLevels(low=bad, mid=bad, high=good, z=torch.randn(5, 8), lam=torch.full((5, 1), 0.5))
    total = sum(v for k, v in crit(lv, y, comb.branch_weight()).items() if k.endswith("_loss"))
    total.backward()
    assert comb.branch_logit.grad.item() < 0  # gradient descent raises w: more weight on the better high branch


# --------------------------------------------------------------------------------------
# batches


def test_composed_batches_are_seeded_and_split_over_ranks(cache):
    split = FeatureStore(cache).split("train")
    one = ComposedBatches(split, batch_size=16, seed=3)
    again = ComposedBatches(split, batch_size=16, seed=3)
    b0 = one[0]
    assert set(b0) == {"reference_image", "reference_aug", "pooled_text", "target_image", "reference_ids",
                       "target_ids", "query_ids"}
    for key in b0:
        assert torch.equal(b0[key], again[0][key])
    g = split.global_features()
    q = read_queries(split)
    rows = b0["query_ids"].numpy()
    assert np.array_equal(b0["reference_ids"].numpy(), q.reference[rows])
    assert np.allclose(b0["target_image"].numpy(), g[q.target[rows]])
    aug = split.store.dataset("images/train/global_aug")[:]
    views = aug[q.reference[rows]]  # [B, K, D]: the batch's view is one of the K
    hit = np.isclose(views, b0["reference_aug"].numpy()[:, None, :]).all(-1).any(-1)
    assert hit.all()
    one.set_epoch(1)
    assert not torch.equal(one[0]["query_ids"], b0["query_ids"])
    halves = [ComposedBatches(split, batch_size=16, seed=3, rank=r, world_size=2)[0] for r in range(2)]
    assert torch.equal(torch.cat([h["query_ids"] for h in halves]), b0["query_ids"])
    assert len(ComposedBatches(split, batch_size=16, max_batches=2)) == 2
    no_aug = ComposedBatches(split, batch_size=16, use_aug=False)[0]
    assert "reference_aug" not in no_aug


# --------------------------------------------------------------------------------------
# evaluation protocols


class OneHotMethod(torch.nn.Module):
    """Gallery = one-hot image rows; query = 1.0 reference + 0.9 target (+ 0.5 a third set member)."""

    task = "composed"

    def __init__(self, split):
        super().__init__()
        self.n = split.n_images
        self.q = read_queries(split)

    def encode_images(self, batch):
        return F.one_hot(batch["image_ids"], self.n).float()

    def encode_queries(self, batch):
        rows = batch["query_ids"].numpy()
        ref, tgt = self.q.reference[rows], self.q.target[rows]
        other = np.array([next(m for m in s if m not in (r, t)) for s, r, t in zip(self.q.subsets[rows], ref, tgt)])
        out = torch.zeros(len(rows), self.n)
        out[np.arange(len(rows)), ref] = 1.0
        has = tgt >= 0  # test1: no target
        out[np.arange(len(rows))[has], tgt[has]] = 0.9
        out[np.arange(len(rows)), other] = 0.5
        return F.normalize(out, dim=-1)


def test_reference_is_excluded_from_cirr_rankings(cache):
    split = FeatureStore(cache).split("val")
    m = evaluate_composed_method(OneHotMethod(split), split, dataset="cirr")
    # the reference outranks the target; removed from the gallery and the set, the target is first
    assert m["composed/R@1"] == 100.0 and m["composed/Rsubset@1"] == 100.0
    assert m["composed/recall_avg"] == 100.0 and m["composed/arithmetic_mean"] == 100.0
    # FashionIQ keeps the reference in the gallery: the target is second
    fiq = evaluate_composed_method(OneHotMethod(split), split, dataset="fashioniq")
    assert fiq["composed/R@1"] == 0.0 if "composed/R@1" in fiq else fiq["composed/R@10"] == 100.0
    assert fiq["composed/average_recall"] == 100.0
    shoes = evaluate_composed_method(OneHotMethod(split), split, dataset="shoes")
    assert shoes["composed/R@1"] == 100.0
    assert resolve_composed_protocol(dataset="FashionIQ") == "fashioniq"
    assert resolve_composed_protocol(dataset="demo") == "cirr"


def test_cirr_submission_files(cache, tmp_path):
    split = FeatureStore(cache).split("test1")
    assert evaluate_composed_method(OneHotMethod(split), split, dataset="cirr", submission_dir=tmp_path) == {}
    recall = json.loads((tmp_path / "recall_submission_test1.json").read_text())
    subset = json.loads((tmp_path / "recall_subset_submission_test1.json").read_text())
    q = read_queries(split)
    names = split.image_ids()
    for sub in (recall, subset):
        assert sub["version"] == "rc2"
        assert set(sub) - {"version", "metric"} == {str(p) for p in q.pair_ids}
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    for i, pid in enumerate(q.pair_ids):
        top, top3 = recall[str(pid)], subset[str(pid)]
        ref = names[q.reference[i]]
        assert len(top) == 50 and ref not in top
        assert len(top3) == 3 and ref not in top3
        assert set(top3) <= {names[m] for m in q.subsets[i]}
        other = next(m for m in q.subsets[i] if m != q.reference[i])  # the query's second-best image
        assert top[0] == names[other] and top3[0] == names[other]


def test_chunked_composed_eval_equals_full_matrix_metric(cache):
    split = FeatureStore(cache).split("val")
    method = make_method("mlcl", cache).eval()
    got = evaluate_composed_method(method, split, dataset="cirr", chunk_elements=37)
    q = read_queries(split)
    with torch.no_grad():
        qe = torch.cat([method.encode_queries(b) for b in iter_query_batches(split, 7)])
        ge = F.normalize(torch.as_tensor(split.global_features()), dim=-1)
    want = composed_recall(qe @ ge.T, q.target, reference=q.reference, subsets=q.subsets)
    for key, value in want.items():
        assert got[f"composed/{key}"] == pytest.approx(value)
    shoes = evaluate_composed_method(method, split, dataset="shoes")
    r = [shoes[f"composed/R@{k}"] for k in (1, 10, 50)]
    assert shoes["composed/recall_mean"] == pytest.approx(sum(r) / 3)


def test_fashioniq_evaluates_each_category_on_its_own_gallery(tmp_path):
    path = write_composed_cache(tmp_path / "fiq.h5", n_sets=(6, 3), fiq_categories=("dress", "shirt", "toptee"))
    store = FeatureStore(path)
    method = make_method("combiner", path).eval()
    m = evaluate_composed_method(method, "val", store=store, dataset="fashioniq")
    m = {k.removeprefix("composed/"): v for k, v in m.items()}
    assert {"dress_R@10", "shirt_R@50", "toptee_R@10", "average_recall"} <= set(m)
    assert m["R@10"] == pytest.approx(np.mean([m[f"{c}_R@10"] for c in ("dress", "shirt", "toptee")]))
    assert m["average_recall"] == pytest.approx((m["R@10"] + m["R@50"]) / 2)
    one = evaluate_composed_method(method, "val_shirt", store=store, dataset="fashioniq")
    assert one["composed/R@10"] == pytest.approx(m["shirt_R@10"])


def test_one_fashioniq_rule_through_the_composed_task(tmp_path):
    """``val`` and ``val_<category>`` both exist: FashionIQ (named, or found from the per-category
    splits when no dataset is known) evaluates the categories, curves per category, as the
    trainer and ``featvlr eval`` both do through the task."""
    from featvlr.evaluation.options import EvalOptions
    from featvlr.tasks import get_task

    path = write_composed_cache(tmp_path / "fiq.h5", n_sets=(6, 3), fiq_categories=("dress", "shirt"))
    store = FeatureStore(path)
    method = make_method("combiner", path).eval()
    task = get_task("composed")
    split = task.eval_split(store, "val")
    want = evaluate_composed_method(method, "val", store=store, dataset="fashioniq")
    curves: dict = {}
    got = task.evaluator(split, EvalOptions(dataset="fashioniq"), ["composed"], "cpu")(method, curves=curves)
    assert got == want and set(curves) == {"composed_dress", "composed_shirt"}
    assert task.evaluator(split, EvalOptions(), None, "cpu")(method) == want
    cirr = task.evaluator(split, EvalOptions(dataset="cirr"), None, "cpu")(method)
    assert "composed/Rsubset@1" in cirr  # CIRR: the one split "val"
    with pytest.raises(FeatvlrError, match="only the composed scenario"):
        task.evaluator(split, EvalOptions(), ["i2t"], "cpu")(method)


def test_composed_protocol_resolver_and_galleries():
    from featvlr.evaluation.composed import composed_galleries

    class Store:
        path = "x.h5"

        def __init__(self, names):
            self.names = names

        def splits(self):
            return list(self.names)

        def has(self, key):
            return key.split("/", 1)[1] in self.names

    assert resolve_composed_protocol("shoes", dataset="cirr") == "shoes"
    assert resolve_composed_protocol(dataset="fashion-iq", composed={"subsets": 1}) == "fashioniq"
    assert resolve_composed_protocol(composed={"subsets": 1}) == "cirr"
    assert resolve_composed_protocol(composed={"category": 1}) == "fashioniq"
    assert resolve_composed_protocol(composed={}) == "shoes" and resolve_composed_protocol() == "auto"
    with pytest.raises(FeatvlrError, match="unknown composed protocol"):
        resolve_composed_protocol("cir")
    both = Store(["val", "val_shirt", "val_dress"])
    assert composed_galleries(both, "val", "fashioniq") == {"dress": "val_dress", "shirt": "val_shirt"}
    assert composed_galleries(both, "val", "auto") == {"dress": "val_dress", "shirt": "val_shirt"}
    assert composed_galleries(both, "val", "cirr") == {"": "val"}
    assert composed_galleries(Store(["val"]), "val", "fashioniq") == {"": "val"}
    with pytest.raises(InputError, match="no FashionIQ split"):
        composed_galleries(Store(["test"]), "val", "fashioniq")


# --------------------------------------------------------------------------------------
# methods


@pytest.mark.parametrize("name", ["combiner", "mlcl"])
def test_methods_train_on_the_toy_split(cache, name):
    method = make_method(name, cache, **{"train.lr": 1e-3})
    split = FeatureStore(cache).split("train")
    batches = ComposedBatches(split, batch_size=32, seed=0)
    opt = torch.optim.AdamW(method.param_groups(3e-3, 0.0))
    before = evaluate_composed_method(method, FeatureStore(cache).split("val"), dataset="cirr")
    torch.manual_seed(0)
    for epoch in range(8):
        batches.set_epoch(epoch)
        for b in range(len(batches)):
            out = method(batches[b], StepState(epoch=epoch))
            loss = sum(v for k, v in out.items() if k.endswith("_loss"))
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = evaluate_composed_method(method, FeatureStore(cache).split("val"), dataset="cirr")
    assert after["composed/R@5"] > before["composed/R@5"] + 10
    assert method.task == "composed"


def test_mlcl_options_param_groups_and_feature_space_fallback(cache):
    method = make_method("mlcl", cache, **{"model.branch_lr": 0.01})
    groups = method.param_groups(2e-5, 0.0)
    assert groups[-1]["params"] == [method.combiner.branch_logit] and groups[-1]["lr"] == 0.01
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))
    assert isinstance(method.text_adapter, torch.nn.Linear)  # 12-d texts, 16-d images
    split = FeatureStore(cache).split("train")
    batch = ComposedBatches(split, batch_size=8, use_aug=False)[0]
    out = method(batch, StepState())  # no cached view: feature-space view
    assert "sscl_high_loss" in out and torch.isfinite(out["sscl_high_loss"])
    strict = make_method("mlcl", cache, **{"loss.aug_source": "cache"})
    with pytest.raises(ConfigError):
        strict(batch, StepState())
    off = make_method("mlcl", cache, **{"loss.sscl_weight": 0.0})
    assert "sscl_high_loss" not in off(batch, StepState())
    with pytest.raises(ConfigError):
        make_method("mlcl", cache, **{"model.inference_weighting": "sideways"})


# --------------------------------------------------------------------------------------
# the trainer, end to end


def test_fashioniq_text_variants_are_drawn_per_query(tmp_path):
    path = write_composed_cache(tmp_path / "fiq.h5", n_sets=(6, 3), train_variants=4)
    split = FeatureStore(path).split("train")
    q = read_queries(split)
    assert q.text.shape == (q.n, 4)
    batches = ComposedBatches(split, batch_size=64, seed=0)
    rows = batches[0]["query_ids"].numpy()
    pooled = split.pooled()
    got = batches[0]["pooled_text"].numpy()
    variant = [int(np.nonzero(np.isclose(pooled[q.text[r]], t).all(-1))[0][0]) for r, t in zip(rows, got)]
    assert len(set(variant)) > 1  # several caption forms in one batch
    first = next(iter_query_batches(split, 8))  # evaluation: column 0
    assert np.allclose(first["pooled_text"].numpy(), pooled[q.text[:8, 0]])


@pytest.mark.parametrize("dataset", ["cirr", "fashioniq"])
def test_train_end_to_end(tmp_path, cache, dataset):
    from featvlr.training.trainer import train

    if dataset == "cirr":
        data = {"cache": str(cache), "dataset": "cirr", "dev_split": "val", "test_split": "test1"}
        metric = "composed/arithmetic_mean"
    else:
        fiq = write_composed_cache(tmp_path / "fiq.h5", n_sets=(6, 2), train_variants=4,
                                   fiq_categories=("dress", "shirt", "toptee"))
        data = {"cache": str(fiq), "dataset": "fashioniq", "dev_split": "val", "test_split": ""}
        metric = "composed/average_recall"
    base = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo_mlcl.yaml")
    raw = {"method": "mlcl", "data": data,
           "model": {"projection_dim": 16, "hidden_dim": 16},
           "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                     "grad_clip": 0.0, "select_split": "val", "select_metric": metric, "progress": False,
                     "max_steps_per_epoch": 3},
           "eval": {"scenarios": ["composed"], "dev_scenarios": ["composed"]}}
    assert base.train.select_metric == "composed/arithmetic_mean"
    result = train(config_from_dict(raw), tmp_path / "run")
    assert metric in result.best_metrics and result.best_epoch >= 1
    assert (tmp_path / "run" / "ckpt" / "best.pt").exists()
    if dataset == "cirr":  # test1 has no targets: the two submission files
        sub = sorted(p.name for p in (tmp_path / "run" / "eval" / "submission").iterdir())
        assert sub == ["recall_submission_test1.json", "recall_subset_submission_test1.json"]
    else:
        assert {"composed/dress_R@10", "composed/toptee_R@50"} <= set(result.best_metrics)
