"""`featvlr extract composed`: CIRR, FashionIQ and Shoes layouts, feature files, CLIP, bad input."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from featvlr.cache.store import FeatureStore
from featvlr.core.errors import ConfigError, InputError
from featvlr.extract.composed import extract_composed, fashioniq_caption, fashioniq_variants

DG = 12


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_cirr(base, rng):
    """cirr/captions + cirr/image_splits for train/val/test1; 8 images and 5 pairs per split."""
    root = base / "cirr"
    names = {}
    pairid = 0
    for split, folder in (("train", "train/0"), ("val", "dev"), ("test1", "test1")):
        prefix = "dev" if split == "val" else split
        gallery = [f"{prefix}-{i}-img0" for i in range(8)]
        names[split] = gallery
        dump(root / "image_splits" / f"split.rc2.{split}.json", {n: f"./{folder}/{n}.png" for n in gallery})
        triplets = []
        for q in range(5):
            ref, tgt = gallery[q], gallery[(q + 3) % 8]
            members = [gallery[(q + k) % 8] for k in range(6)]
            t = {"pairid": pairid, "reference": ref, "caption": f"make it {q} times brighter",
                 "img_set": {"id": q, "members": members, "reference_rank": 0, "target_rank": 3}}
            if split != "test1":
                t["target_hard"] = tgt
                t["target_soft"] = {tgt: 1.0}
            triplets.append(t)
            pairid += 1
        dump(root / "captions" / f"cap.rc2.{split}.json", triplets)
    all_names = [n for g in names.values() for n in g]
    feats = {n: rng.standard_normal(DG).astype(np.float32) for n in all_names}
    return root, names, feats


def make_fashioniq(base, rng):
    root = base / "fashionIQ_dataset"
    galleries = {}
    for split in ("train", "val"):
        for c, cat in enumerate(("dress", "shirt", "toptee")):
            gallery = [f"B{split[0]}{c}{i:03d}" for i in range(5)]
            if split == "train" and cat == "shirt":
                gallery.append("Bt0000")                   # shared with dress: the train union dedupes
            galleries[(split, cat)] = gallery
            dump(root / "image_splits" / f"split.{cat}.{split}.json", gallery)
            triplets = [{"candidate": gallery[q], "target": gallery[q + 1],
                         "captions": [f"is {cat} and longer.", f"has {q} buttons?"]} for q in range(3)]
            dump(root / "captions" / f"cap.{cat}.{split}.json", triplets)
    names = sorted({n for g in galleries.values() for n in g})
    return root, galleries, names, rng.standard_normal((len(names), DG)).astype(np.float32)


def make_shoes(base, rng):
    root = base / "shoes"
    names = {}
    for split in ("train", "val"):
        gallery = [f"womens_{split}/boots/img_{split}_{i}.jpg" for i in range(6)]
        names[split] = gallery
        dump(root / "annotations" / f"split.{split}.json", gallery)
        dump(root / "annotations" / f"triplet.{split}.json",
             [{"ReferenceImageName": gallery[q], "ImageName": gallery[5 - q], "RelativeCaption": f"taller heel {q}"}
              for q in range(4)])
    return root, names


# -- CIRR ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cirr(tmp_path_factory, text_encoder):
    base = tmp_path_factory.mktemp("cirr_dataset")
    rng = np.random.default_rng(0)
    root, names, feats = make_cirr(base, rng)
    np.savez(base / "feats.npz", **feats)
    aug = {n: rng.standard_normal((3, DG)).astype(np.float32) for n in names["train"]}
    np.savez(base / "aug.npz", **aug)
    out = extract_composed("cirr", base, base / "cirr.h5", image_features=base / "feats.npz",
                           aug_features=base / "aug.npz", text_model=text_encoder, progress=False)
    return base, names, feats, aug, out


def test_cirr_layout(cirr, text_encoder):
    base, names, feats, aug, out = cirr
    store = FeatureStore(out)                               # validates
    assert store.splits() == ["test1", "train", "val"]
    triplets = json.loads((base / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    s = store.split("val")
    assert s.image_ids() == names["val"]
    np.testing.assert_array_equal(s.global_features(), np.stack([feats[n] for n in names["val"]]))
    comp = s.composed()
    index = {n: i for i, n in enumerate(names["val"])}
    np.testing.assert_array_equal(comp["reference"], [index[t["reference"]] for t in triplets])
    np.testing.assert_array_equal(comp["target"], [index[t["target_hard"]] for t in triplets])
    np.testing.assert_array_equal(comp["subsets"], [[index[m] for m in t["img_set"]["members"]] for t in triplets])
    np.testing.assert_array_equal(comp["pair_ids"], [t["pairid"] for t in triplets])
    np.testing.assert_array_equal(comp["text"], np.arange(5))
    np.testing.assert_array_equal(s.image_index(), comp["reference"])
    assert s.raw_captions() == [t["caption"] for t in triplets]
    np.testing.assert_allclose(s.pooled(), text_encoder.model.encode([t["caption"] for t in triplets]), atol=2e-5)
    assert store.h5["composed/val"].attrs["remove_reference"] and store.h5["composed/val"].attrs["dataset"] == "cirr"
    assert (store.split("test1").composed()["target"] == -1).all()


def test_cirr_augmented_views(cirr):
    _, names, _, aug, out = cirr
    store = FeatureStore(out)
    views = store.dataset("images/train/global_aug")[:]
    np.testing.assert_array_equal(views, np.stack([aug[n] for n in names["train"]]))
    assert not store.has("images/val/global_aug")          # the file has no views of val images


def test_cirr_partial_aug_fills_plain_vectors(tmp_path, text_encoder):
    rng = np.random.default_rng(1)
    root, names, feats = make_cirr(tmp_path, rng)
    np.savez(tmp_path / "f.npz", **feats)
    refs = names["train"][:5]                                # every reference, not every gallery image
    aug = {n: rng.standard_normal((2, DG)).astype(np.float32) for n in refs}
    np.savez(tmp_path / "a.npz", **aug)
    out = extract_composed("cirr", root, tmp_path / "c.h5", image_features=tmp_path / "f.npz",
                           aug_features=tmp_path / "a.npz", text_model=text_encoder, progress=False,
                           splits=["train"], dtype="float16")
    views = FeatureStore(out).dataset("images/train/global_aug")[:]
    assert views.dtype == np.float16 and views.shape == (8, 2, DG)
    np.testing.assert_array_equal(views[:5], np.stack([aug[n] for n in refs]).astype(np.float16))
    np.testing.assert_array_equal(views[7], np.stack([feats[names["train"][7]]] * 2).astype(np.float16))


# -- FashionIQ -----------------------------------------------------------------------------

def test_fashioniq_captions():
    assert fashioniq_caption("is red.", " has long sleeves?") == "Is red and has long sleeves"
    assert fashioniq_variants("is red.", "Has sleeves") == [
        "Is red and Has sleeves", "Has sleeves and is red", "Is red", "Has sleeves"]


def test_fashioniq_layout(tmp_path, text_encoder):
    rng = np.random.default_rng(2)
    root, galleries, names, array = make_fashioniq(tmp_path, rng)
    np.save(tmp_path / "f.npy", array)
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    out = extract_composed("fashioniq", tmp_path, tmp_path / "fiq.h5", image_features=tmp_path / "f.npy",
                           image_names=tmp_path / "names.txt", text_model=text_encoder, progress=False)
    store = FeatureStore(out)
    assert store.splits() == ["train", "val_dress", "val_shirt", "val_toptee"]
    row = {n: i for i, n in enumerate(names)}
    # per-category validation: own gallery, deterministic caption
    s = store.split("val_shirt")
    gallery = galleries[("val", "shirt")]
    assert s.image_ids() == gallery
    np.testing.assert_array_equal(s.global_features(), array[[row[n] for n in gallery]])
    comp = s.composed()
    np.testing.assert_array_equal(comp["reference"], [0, 1, 2])
    np.testing.assert_array_equal(comp["target"], [1, 2, 3])
    assert list(comp["category"]) == ["shirt"] * 3
    assert s.raw_captions()[1] == "Is shirt and longer and has 1 buttons"
    assert comp["captions"].shape == (3, 2) and comp["captions"][1, 1] == "has 1 buttons?"
    assert not store.h5["composed/val_shirt"].attrs["remove_reference"]
    # train: the three categories together, four caption variants per query
    t = store.split("train")
    union = list(dict.fromkeys(galleries[("train", "dress")] + galleries[("train", "shirt")]
                               + galleries[("train", "toptee")]))
    assert t.image_ids() == union and t.n_images == 15
    comp = t.composed()
    q = 9
    assert list(comp["category"]) == ["dress"] * 3 + ["shirt"] * 3 + ["toptee"] * 3
    np.testing.assert_array_equal(comp["text"], np.arange(q)[:, None] + q * np.arange(4))
    raw = t.raw_captions()
    assert len(raw) == 4 * q and t.n_texts == 4 * q
    assert [raw[i] for i in comp["text"][4]] == fashioniq_variants("is shirt and longer.", "has 1 buttons?")
    np.testing.assert_array_equal(t.image_index(), np.tile(comp["reference"], 4))
    np.testing.assert_allclose(t.pooled(), text_encoder.model.encode(raw), atol=2e-5)


# -- Shoes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["h5_table", "h5_by_name", "npz_by_stem"])
def test_shoes_feature_files(tmp_path, text_encoder, form):
    rng = np.random.default_rng(3)
    root, names = make_shoes(tmp_path, rng)
    all_names = names["train"] + names["val"]
    array = rng.standard_normal((len(all_names), DG)).astype(np.float32)
    if form == "h5_table":
        path = tmp_path / "f.h5"
        with h5py.File(path, "w") as f:
            f["names"] = np.array(all_names, dtype=object).astype(h5py.string_dtype())
            f["features"] = array
    elif form == "h5_by_name":
        path = tmp_path / "f.h5"
        with h5py.File(path, "w") as f:
            for n, v in zip(all_names, array):
                f[n] = v                                     # "womens_train/boots/..." nests groups
    else:
        path = tmp_path / "f.npz"                             # keyed by file stem only
        np.savez(path, **{n.rsplit("/", 1)[-1].rsplit(".", 1)[0]: v for n, v in zip(all_names, array)})
    out = extract_composed("shoes", root, tmp_path / "s.h5", image_features=path, text_model=text_encoder,
                           progress=False)
    s = FeatureStore(out).split("val")
    np.testing.assert_array_equal(s.global_features(), array[6:])
    comp = s.composed()
    np.testing.assert_array_equal(comp["reference"], [0, 1, 2, 3])
    np.testing.assert_array_equal(comp["target"], [5, 4, 3, 2])
    assert s.raw_captions()[2] == "taller heel 2"
    assert "subsets" not in comp and "category" not in comp


# -- raw images through a tiny random CLIP -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised 2-layer CLIP saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    base = tmp_path_factory.mktemp("clip")
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    (base / "vocab.json").write_text(json.dumps(vocab))
    (base / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(base / "vocab.json"), str(base / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    hf = base / "hf"
    CLIPModel(config).save_pretrained(hf)
    processor.save_pretrained(hf)
    st = base / "st"
    SentenceTransformer(str(hf), device="cpu").save(str(st))
    return st


def test_clip_model_encodes_images_and_texts(tmp_path, tiny_clip):
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    rng = np.random.default_rng(4)
    root, names, _ = make_cirr(tmp_path / "cirr_dataset", rng)
    for split, folder in (("train", "train/0"), ("val", "dev"), ("test1", "test1")):
        for n in names[split]:
            p = tmp_path / "cirr_dataset" / folder / f"{n}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(p)
    out = extract_composed("cirr", tmp_path / "cirr_dataset", tmp_path / "c.h5", clip_model=tiny_clip,
                           splits=["val"], progress=False, device="cpu")
    store = FeatureStore(out)
    s = store.split("val")
    model = SentenceTransformer(str(tiny_clip), device="cpu")
    images = [Image.open(tmp_path / "cirr_dataset" / "dev" / f"{n}.png").convert("RGB") for n in names["val"]]
    np.testing.assert_allclose(s.global_features(), model.encode(images), atol=1e-5)
    np.testing.assert_allclose(s.pooled(), model.encode(s.raw_captions()), atol=1e-5)
    assert store.attrs["text_dim"] == 16 and store.attrs["text_encoder"] == "st"
    assert s.global_features().shape == (8, 16)
    # a missing image is reported before anything is written
    (tmp_path / "cirr_dataset" / "dev" / f"{names['val'][3]}.png").unlink()
    with pytest.raises(InputError, match="no such image"):
        extract_composed("cirr", tmp_path / "cirr_dataset", tmp_path / "c2.h5", clip_model=tiny_clip,
                         splits=["val"], progress=False, device="cpu")
    assert not (tmp_path / "c2.h5").exists()


# -- bad input -----------------------------------------------------------------------------

def _setup_bad(tmp_path, case):
    """A CIRR folder + features, damaged by ``case``; returns (args for the CLI, file to name)."""
    rng = np.random.default_rng(5)
    root, names, feats = make_cirr(tmp_path, rng)
    feat_path = tmp_path / "f.npz"
    extra: list = []
    named = None
    if case == "missing_captions":
        named = root / "captions" / "cap.rc2.val.json"
        named.unlink()
        extra = ["--splits", "val"]
    elif case == "bad_json":
        named = root / "captions" / "cap.rc2.val.json"
        named.write_text('[{"pairid": 1,')
    elif case == "reference_not_in_gallery":
        named = root / "captions" / "cap.rc2.val.json"
        data = json.loads(named.read_text())
        data[2]["reference"] = "dev-99-img0"
        dump(named, data)
    elif case == "missing_features":
        del feats[names["val"][4]]
        named = feat_path
    elif case == "nan_features":
        feats[names["val"][1]][3] = np.nan
        named = feat_path
    elif case == "npy_without_names":
        feat_path = tmp_path / "f.npy"
        np.save(feat_path, np.stack(list(feats.values())))
        named = feat_path
    elif case == "names_count":
        feat_path = tmp_path / "f.npy"
        np.save(feat_path, np.stack(list(feats.values())))
        named = tmp_path / "names.txt"
        named.write_text("\n".join(list(feats)[:-1]))
        extra = ["--image-names", named]
    elif case == "aug_width":
        named = tmp_path / "a.npz"
        np.savez(named, **{n: np.zeros((2, DG + 1), np.float32) for n in names["train"]})
        extra = ["--aug-features", named]
    elif case == "aug_missing_reference":
        named = tmp_path / "a.npz"
        np.savez(named, **{n: np.zeros((2, DG), np.float32) for n in names["train"][1:]})
        extra = ["--aug-features", named]
    elif case == "int_features":
        feats = {k: v.astype(np.int64) for k, v in feats.items()}
        named = feat_path
    elif case == "clip_not_a_model":
        named = tmp_path / "clipdir"
        named.mkdir()
        extra = ["--clip-model", named]
    if feat_path.suffix == ".npz":
        np.savez(feat_path, **feats)
    return ["--image-features", feat_path, *extra], named


BAD = {
    "missing_captions": "no such file",
    "bad_json": "not valid JSON",
    "reference_not_in_gallery": "reference image 'dev-99-img0' is not in",
    "missing_features": "1 image(s) have no features",
    "nan_features": "contain NaN or inf",
    "npy_without_names": "needs --image-names",
    "names_count": "has 23 names for the 24 rows",
    "aug_width": "width 13",
    "aug_missing_reference": "some reference images have no augmented views, e.g. ['train-0-img0']",
    "int_features": "floating point",
    "clip_not_a_model": "not a model folder",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(tmp_path, case, cli):
    args, named = _setup_bad(tmp_path, case)
    out = tmp_path / "out" / "c.h5"
    code, _, err = cli("extract", "composed", "--dataset", "cirr", "--root", tmp_path, "--out", out,
                       "--no-progress", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"featvlr: error: {named}: ") and BAD[case] in lines[0], err
    assert not out.exists() and not out.with_name("c.h5.partial").exists()


def test_bad_input_library(tmp_path, text_encoder):
    args, named = _setup_bad(tmp_path, "reference_not_in_gallery")
    with pytest.raises(InputError, match="not in the split's gallery") as info:
        extract_composed("cirr", tmp_path, tmp_path / "c.h5", image_features=args[1], text_model=text_encoder)
    assert info.value.path == str(named)
    with pytest.raises(ConfigError, match="--image-features"):
        extract_composed("cirr", tmp_path, tmp_path / "c.h5")
    with pytest.raises(ConfigError, match="choose one of"):
        extract_composed("coco", tmp_path, tmp_path / "c.h5", image_features=args[1])
    with pytest.raises(InputError, match="not a fashioniq dataset folder"):
        extract_composed("fashioniq", tmp_path, tmp_path / "c.h5", image_features=args[1])


def test_existing_cache_and_fashioniq_bad_captions(tmp_path, text_encoder, cli):
    rng = np.random.default_rng(6)
    root, galleries, names, array = make_fashioniq(tmp_path, rng)
    np.savez(tmp_path / "f.npz", names=np.array(names), features=array)
    out = tmp_path / "c.h5"
    out.write_bytes(b"old")
    code, _, err = cli("extract", "composed", "--dataset", "fashioniq", "--root", root, "--out", out,
                       "--image-features", tmp_path / "f.npz")
    assert code == 2 and "exists already" in err and out.read_bytes() == b"old"
    bad = root / "captions" / "cap.toptee.val.json"
    data = json.loads(bad.read_text())
    data[1]["captions"] = ["only one"]
    dump(bad, data)
    with pytest.raises(InputError, match="entry 1: 'captions' must be a list of two strings") as info:
        extract_composed("fashioniq", root, out, image_features=tmp_path / "f.npz", overwrite=True,
                         text_model=text_encoder)
    assert info.value.path == str(bad) and out.read_bytes() == b"old"


def test_cli_subprocess_missing_root(tmp_path, cli_process):
    proc = cli_process("extract", "composed", "--dataset", "shoes", "--root", tmp_path / "none",
                       "--image-features", tmp_path / "f.npz")
    assert proc.returncode == 2
    assert proc.stderr == f"featvlr: error: {tmp_path / 'none'}: no such folder (expected the shoes dataset)\n"
