"""The built-in demo dataset: determinism, layout, learnable structure, atomic writing."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import featvlr.demo.dataset as demo_dataset
from featvlr.core.errors import ConfigError, InputError
from featvlr.demo import (
    CATEGORIES,
    CIRR_SPLITS,
    DEMO_DEFAULTS,
    PRECOMP_SPLITS,
    demo_is_complete,
    demo_sources,
    load_demo_meta,
    make_demo_dataset,
)
from featvlr.demo.vocabulary import CAT_NOUNS

SMALL = {"n_train": 240, "n_dev": 20, "n_test": 60, "n_regions": 10, "region_dim": 64,
         "n_cirr_train": 600, "n_cirr_val": 120, "n_cirr_test": 30, "global_dim": 48, "n_aug": 3}
TINY = {"n_train": 12, "n_dev": 4, "n_test": 4, "n_regions": 6, "region_dim": 16,
        "n_cirr_train": 20, "n_cirr_val": 6, "n_cirr_test": 6, "global_dim": 16, "n_aug": 2}
CIRR_KEYS = {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set"}
CIRR_TEST_KEYS = {"pairid", "reference", "caption", "img_set"}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "small", seed=3, **SMALL)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def nrm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def bag_of_words(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    out = np.zeros((len(texts), len(vocab)))
    for i, t in enumerate(texts):
        for w in t.lower().replace(",", " ").split():
            if w in vocab:
                out[i, vocab[w]] = 1.0
    return out


def make_vocab(texts: list[str]) -> dict[str, int]:
    words = sorted({w for t in texts for w in t.lower().replace(",", " ").split()})
    return {w: i for i, w in enumerate(words)}


# -- determinism ---------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = files_of(make_demo_dataset(tmp_path / "a", seed=5, **TINY))
    b = files_of(make_demo_dataset(tmp_path / "b", seed=5, **TINY))
    c = files_of(make_demo_dataset(tmp_path / "c", seed=6, **TINY))
    assert a.keys() == b.keys() == c.keys()
    assert a == b
    for name in ("train_ims.npy", "train_caps.txt", "cirr/image_features.npz", "cirr/captions/cap.rc2.train.json"):
        assert a[name] != c[name], name


def test_visual_noise_scales_only_the_region_noise(tmp_path):
    """``visual_noise`` changes the region features (more spread at a larger scale) and nothing else."""
    a = make_demo_dataset(tmp_path / "a", seed=2, **TINY)
    b = make_demo_dataset(tmp_path / "b", seed=2, visual_noise=2.0, **TINY)
    fa, fb = files_of(a), files_of(b)
    changed = {name for name in fa if fa[name] != fb[name]}
    assert {"train_ims.npy", "dev_ims.npy", "test_ims.npy"} <= changed
    assert changed <= {"train_ims.npy", "dev_ims.npy", "test_ims.npy", "demo_meta.json"}
    ims_a, ims_b = np.load(a / "train_ims.npy"), np.load(b / "train_ims.npy")
    assert float(ims_b.std()) > float(ims_a.std())
    assert json.loads((b / "demo_meta.json").read_text())["params"]["visual_noise"] == 2.0


def test_splits_do_not_depend_on_other_sizes(tmp_path):
    """The world and each split have their own random stream: a bigger train set leaves test as it was."""
    a = make_demo_dataset(tmp_path / "a", seed=1, **TINY)
    b = make_demo_dataset(tmp_path / "b", seed=1, **{**TINY, "n_train": 30})
    for name in ("test_ims.npy", "test_caps.txt", "dev_caps.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train_caps.txt").read_text().splitlines() != (b / "train_caps.txt").read_text().splitlines()


# -- layout --------------------------------------------------------------------------------

def test_precomp_layout(small):
    next_ids = []
    for split in PRECOMP_SPLITS:
        n = SMALL[f"n_{split}"]
        ims = np.load(small / f"{split}_ims.npy", mmap_mode="r")
        assert ims.dtype == np.float32 and ims.shape == (n, SMALL["n_regions"], SMALL["region_dim"])
        assert np.isfinite(np.asarray(ims)).all()
        caps = (small / f"{split}_caps.txt").read_text(encoding="utf-8").split("\n")
        assert caps[-1] == "" and len(caps) - 1 == 5 * n
        assert all(c.strip() == c and c for c in caps[:-1])
        ids = (small / f"{split}_ids.txt").read_text().split()
        assert len(ids) == n
        next_ids += ids
        scenes = json.loads((small / "truth" / f"{split}_scenes.json").read_text())
        assert len(scenes) == n and [str(s["id"]) for s in scenes] == ids
        for s in scenes:
            assert 2 <= len(s["objects"]) <= 5 and 1 <= len(s["relations"]) <= 2
            assert len({o["category"] for o in s["objects"]}) == len(s["objects"])
            assert len(s["regions"]) == SMALL["n_regions"]
    assert len(set(next_ids)) == len(next_ids)  # ids unique over all splits


def test_five_captions_of_one_image_differ_and_mention_its_objects(small):
    caps = (small / "train_caps.txt").read_text().splitlines()
    scenes = json.loads((small / "truth" / "train_scenes.json").read_text())
    nouns = {c: set(CAT_NOUNS[c]) for c in CATEGORIES}
    for i, s in enumerate(scenes[:100]):
        mine = caps[5 * i: 5 * i + 5]
        assert len(set(mine)) >= 4
        names = [n for o in s["objects"] for n in nouns[o["category"]]]
        for c in mine:  # every caption names at least one object of its own scene
            assert any(n in c.lower() for n in names), (c, s)


def test_cirr_layout(small):
    cirr = small / "cirr"
    feats = np.load(cirr / "image_features.npz")
    aug = np.load(cirr / "image_features_aug.npz")
    all_names: list[str] = []
    pairids: list[int] = []
    for split in CIRR_SPLITS:
        gallery = json.loads((cirr / "image_splits" / f"split.rc2.{split}.json").read_text())
        assert isinstance(gallery, dict) and all(isinstance(v, str) for v in gallery.values())
        folder = {"train": "./train/", "val": "./dev/", "test1": "./test1/"}[split]
        assert all(v.startswith(folder) and v.endswith(k + ".png") for k, v in gallery.items())
        all_names += list(gallery)
        triplets = json.loads((cirr / "captions" / f"cap.rc2.{split}.json").read_text())
        n_key = {"train": "n_cirr_train", "val": "n_cirr_val", "test1": "n_cirr_test"}[split]
        assert len(triplets) == SMALL[n_key]
        for t in triplets:
            pairids.append(t["pairid"])
            assert isinstance(t["pairid"], int) and isinstance(t["caption"], str) and t["caption"]
            members = t["img_set"]["members"]
            assert len(members) == 6 and len(set(members)) == 6
            assert all(m in gallery for m in members) and t["reference"] in gallery
            assert members[t["img_set"]["reference_rank"]] == t["reference"]
            if split == "test1":
                assert set(t) == CIRR_TEST_KEYS
                assert set(t["img_set"]) == {"id", "members", "reference_rank"}
            else:
                assert set(t) == CIRR_KEYS
                assert set(t["img_set"]) == {"id", "members", "reference_rank", "target_rank"}
                assert t["target_hard"] in gallery and t["target_hard"] != t["reference"]
                assert members[t["img_set"]["target_rank"]] == t["target_hard"]
                assert t["target_soft"] == {t["target_hard"]: 1.0}
    assert len(set(pairids)) == len(pairids)
    assert len(set(all_names)) == len(all_names)
    assert sorted(feats.files) == sorted(all_names) and sorted(aug.files) == sorted(all_names)
    first = all_names[0]
    assert feats[first].shape == (SMALL["global_dim"],) and feats[first].dtype == np.float32
    assert aug[first].shape == (SMALL["n_aug"], SMALL["global_dim"]) and aug[first].dtype == np.float32


def test_meta_readme_and_sources(small):
    meta = load_demo_meta(small)
    assert meta["seed"] == 3 and meta["params"]["n_train"] == SMALL["n_train"]
    assert set(DEMO_DEFAULTS) <= set(meta["params"])
    assert "README.txt" in meta["files"] and (small / "README.txt").read_text().startswith("featvlr demo dataset")
    src = demo_sources(small)
    assert src["precomp_root"] == small and src["cirr_root"] == small / "cirr"
    assert src["image_features"].is_file() and src["aug_features"].is_file()


def test_without_composed(tmp_path):
    root = make_demo_dataset(tmp_path / "d", composed=False, **{**TINY, "n_aug": 0})
    assert not (root / "cirr").exists() and demo_is_complete(root)
    assert demo_sources(root)["cirr_root"] is None


# -- structure: both modalities carry signal, text more than regions -----------------------

def test_captions_of_one_image_are_closer_than_captions_of_others(small):
    caps = (small / "test_caps.txt").read_text().splitlines()
    X = nrm(bag_of_words(caps, make_vocab(caps)))
    S = X @ X.T
    img = np.repeat(np.arange(len(caps) // 5), 5)
    same = (img[:, None] == img[None, :]) & ~np.eye(len(caps), dtype=bool)
    other = img[:, None] != img[None, :]
    assert S[same].mean() > S[other].mean() + 0.15


def region_data(root: Path, split: str):
    ims = np.load(root / f"{split}_ims.npy")
    scenes = json.loads((root / "truth" / f"{split}_scenes.json").read_text())
    X, y = [], []
    for im, s in zip(ims, scenes):
        for r, o in enumerate(s["regions"]):
            if o >= 0:
                X.append(im[r])
                y.append(CATEGORIES.index(s["objects"][o]["category"]))
    return np.array(X), np.array(y), ims, scenes


def test_regions_carry_category_signal(small):
    """Nearest class mean over object regions beats chance by far (the visual side is learnable)."""
    Xa, ya, _, _ = region_data(small, "train")
    Xb, yb, _, _ = region_data(small, "test")
    classes = np.unique(ya)
    means = nrm(np.stack([Xa[ya == c].mean(0) for c in classes]) - Xa.mean(0))
    pred = classes[np.argmax(nrm(Xb - Xa.mean(0)) @ means.T, axis=1)]
    chance = Counter(yb.tolist()).most_common(1)[0][1] / len(yb)
    assert (pred == yb).mean() > max(3 * chance, 0.3)


def test_text_neighbourhoods_beat_image_neighbourhoods(small):
    """Scenes found through captions share more categories than scenes found through regions,
    and both beat random neighbours."""
    _, _, ims, scenes = region_data(small, "test")
    cats = [{o["category"] for o in s["objects"]} for s in scenes]
    J = np.array([[len(a & b) / len(a | b) for b in cats] for a in cats])
    n = len(cats)

    def neighbour_jaccard(v):
        sim = nrm(v) @ nrm(v).T
        np.fill_diagonal(sim, -np.inf)
        return J[np.arange(n), sim.argmax(1)].mean()

    caps = (small / "test_caps.txt").read_text().splitlines()
    text = bag_of_words(caps, make_vocab(caps)).reshape(n, 5, -1).mean(1)
    image = ims.mean(1) - ims.mean((0, 1))
    random_j = (J.sum() - n) / (n * (n - 1))
    assert neighbour_jaccard(text) > neighbour_jaccard(image) > random_j


def test_composed_target_is_reference_plus_edit(small):
    """A ridge map (reference, bag of words of the caption) -> target - reference, fitted on train,
    retrieves val targets far better than the reference alone, and the target is closer to the
    reference than a random image."""
    cirr = small / "cirr"
    feats = dict(np.load(cirr / "image_features.npz"))
    trip = {s: json.loads((cirr / "captions" / f"cap.rc2.{s}.json").read_text()) for s in ("train", "val")}
    vocab = make_vocab([t["caption"] for t in trip["train"]])

    def arrays(split):
        R = np.stack([feats[t["reference"]] for t in trip[split]]).astype(np.float64)
        T = np.stack([feats[t["target_hard"]] for t in trip[split]]).astype(np.float64)
        W = bag_of_words([t["caption"] for t in trip[split]], vocab)
        return R, T, np.hstack([R, W, np.ones((len(R), 1))])

    R, T, X = arrays("train")
    B = np.linalg.solve(X.T @ X + np.eye(X.shape[1]), X.T @ (T - R))
    Rv, Tv, Xv = arrays("val")
    gallery = list(json.loads((cirr / "image_splits" / "split.rc2.val.json").read_text()))
    pos = {n: i for i, n in enumerate(gallery)}
    G = nrm(np.stack([feats[n] for n in gallery]))

    def recall_at_1(Q):
        S = nrm(Q) @ G.T
        hits = []
        for q, t in enumerate(trip["val"]):
            s = S[q]
            s[pos[t["reference"]]] = -np.inf
            hits.append(int(np.argmax(s)) == pos[t["target_hard"]])
        return float(np.mean(hits))

    assert (nrm(Rv) * nrm(Tv)).sum(1).mean() > (nrm(Rv) @ G.T).mean() + 0.2
    assert recall_at_1(Rv + Xv @ B) > recall_at_1(Rv) + 0.1


def test_augmented_views_are_close_to_their_image(small):
    cirr = small / "cirr"
    feats = np.load(cirr / "image_features.npz")
    aug = np.load(cirr / "image_features_aug.npz")
    names = sorted(feats.files)[:50]
    own = np.mean([(nrm(aug[n]) @ nrm(feats[n])).mean() for n in names])
    other = np.mean([(nrm(aug[n]) @ nrm(feats[m])).mean() for n, m in zip(names, names[1:] + names[:1])])
    assert own > 0.9 and own > other


# -- writing -------------------------------------------------------------------------------

def test_refuses_to_overwrite_a_complete_dataset(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=0, **TINY)
    assert demo_is_complete(root)
    before = files_of(root)
    with pytest.raises(InputError) as err:
        make_demo_dataset(root, seed=1, **TINY)
    assert str(root) in str(err.value)
    assert files_of(root) == before
    make_demo_dataset(root, seed=1, overwrite=True, **TINY)
    assert demo_is_complete(root) and load_demo_meta(root)["seed"] == 1
    assert not (tmp_path / "d.partial").exists() and not (tmp_path / "d.old").exists()


def test_refuses_a_foreign_folder_even_with_overwrite(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError):
        make_demo_dataset(foreign, overwrite=True, **TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo_is_complete(make_demo_dataset(empty, **TINY))


def test_incomplete_folder_is_detected_and_replaced(tmp_path):
    root = make_demo_dataset(tmp_path / "d", **TINY)
    (root / "test_caps.txt").unlink()
    assert not demo_is_complete(root)
    make_demo_dataset(root, **TINY)  # a damaged demo folder is rebuilt without overwrite
    assert demo_is_complete(root)
    with open(root / "train_ims.npy", "ab") as f:
        f.write(b"\0")
    assert not demo_is_complete(root)
    assert not demo_is_complete(tmp_path / "nothing")


def test_failure_leaves_no_folder(tmp_path, monkeypatch):
    def boom(root, params):
        (root / "train_ims.npy").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_dataset, "generate", boom)
    with pytest.raises(RuntimeError):
        make_demo_dataset(tmp_path / "d", **TINY)
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()


@pytest.mark.parametrize("bad", [{"n_train": 0}, {"n_regions": 1}, {"region_dim": 4}, {"seed": -1},
                                 {"n_aug": -1}, {"visual_noise": -0.5}, {"visual_noise": "high"},
                                 {"cirr_pairs_per_set": {"train": 11, "val": 3, "test1": 3}}])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(ConfigError):
        make_demo_dataset(tmp_path / "d", **{**TINY, **bad})
    assert not (tmp_path / "d").exists()


# -- the extractors read what the generator writes -------------------------------------------

@pytest.mark.slow
def test_extractors_read_the_demo(tmp_path, text_encoder):
    from featvlr.cache.store import FeatureStore
    from featvlr.extract.composed import extract_composed
    from featvlr.extract.precomp import extract_precomp

    root = make_demo_dataset(tmp_path / "d", seed=2, **TINY)
    src = demo_sources(root)
    cache = extract_precomp(src["precomp_root"], tmp_path / "demo.h5", text_model=text_encoder,
                            dtype="float32", progress=False)
    store = FeatureStore(cache)
    for split in PRECOMP_SPLITS:
        s = store.split(split)
        assert s.n_images == TINY[f"n_{split}"] and s.n_texts == 5 * TINY[f"n_{split}"]
        assert (s.n_regions, s.region_dim) == (TINY["n_regions"], TINY["region_dim"])
    composed = extract_composed("cirr", src["cirr_root"], tmp_path / "composed.h5",
                                image_features=src["image_features"], aug_features=src["aug_features"],
                                text_model=text_encoder, progress=False)
    cstore = FeatureStore(composed)
    assert {"train", "val", "test1"} <= set(cstore.splits())


def test_demo_build_refuses_a_folder_generated_with_other_parameters(tmp_path):
    """``featvlr demo --seed 1`` over the seed-0 data must not train on the seed-0 caches silently."""
    from featvlr.app.demo import build_demo_caches

    data = make_demo_dataset(tmp_path / "features" / "demo_data", seed=5, **TINY)
    with pytest.raises(InputError, match="seed=5 .asked 6."):
        build_demo_caches(tmp_path / "features", seed=6, data_dir=data, progress=False)
    with pytest.raises(InputError, match="visual_noise"):
        build_demo_caches(tmp_path / "features", seed=5, data_dir=data, progress=False,
                          params={**TINY, "visual_noise": 2.0})
    assert not (tmp_path / "features" / "demo.h5").exists()
