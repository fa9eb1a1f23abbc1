"""`featvlr extract images`: Karpathy JSON + raw images through a tiny random CLIP vision tower."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from featvlr.cache.store import FeatureStore
from featvlr.core.errors import ConfigError, InputError
from featvlr.extract.images import extract_images, read_karpathy

N_SPLIT = {"train": 14, "val": 6, "test": 6, "restval": 4}


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory):
    """A randomly initialised 2-layer CLIP vision tower with projection, saved to a folder."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("tower") / "tiny-clip-vision"
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone(tiny_tower):
    from featvlr.extract.vision_backbone import VisionBackbone

    return VisionBackbone(tiny_tower, device="cpu")


def _image(rng, k):
    from PIL import Image

    h, w = (24 + 3 * (k % 5), 32 + 2 * (k % 7))
    rgb = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    kind = k % 6
    if kind == 1:
        return rgb.convert("L"), "png"          # grayscale
    if kind == 2:
        return rgb.convert("CMYK"), "jpg"       # CMYK JPEG
    if kind == 3:
        return rgb.convert("RGBA"), "png"
    if kind == 4:
        return rgb.convert("P"), "png"          # palette
    return rgb, "jpg" if kind == 5 else "png"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """30 small images of mixed modes and sizes and a Karpathy JSON (restval under val2014/)."""
    root = tmp_path_factory.mktemp("karpathy")
    images = root / "images"
    rng = np.random.default_rng(0)
    entries, k = [], 0
    for split, n in N_SPLIT.items():
        for i in range(n):
            im, ext = _image(rng, k)
            folder = "val2014" if split == "restval" else ""
            name = f"{split}_{i:03d}.{ext}"
            (images / folder).mkdir(parents=True, exist_ok=True)
            im.save(images / folder / name)
            e = {"filename": name, "split": split, "imgid": k,
                 "sentences": [{"raw": f"a {split} photo number {i} variant {c} ", "tokens": []}
                               for c in range(5 + i % 3)]}
            if folder:
                e["filepath"] = folder
            entries.append(e)
            k += 1
    ann = root / "dataset_tiny.json"
    ann.write_text(json.dumps({"images": entries, "dataset": "tiny"}))
    return images, ann


def _direct(tower, paths):
    """Patch tokens and projected vectors from a plain transformers forward pass."""
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(tower).eval()
    proc = CLIPImageProcessor.from_pretrained(tower)
    ims = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        out = model(pixel_values=proc(images=ims, return_tensors="pt")["pixel_values"])
    return out.last_hidden_state[:, 1:].numpy(), out.image_embeds.numpy()


def test_read_karpathy_splits_and_restval(dataset):
    images, ann = dataset
    plan = read_karpathy(ann, images)
    assert [s.name for s in plan] == ["train", "dev", "test"]
    assert [s.n_images for s in plan] == [14, 6, 6]
    assert all(len(s.captions) == 5 * s.n_images for s in plan)       # first 5 of 5..7 sentences
    assert plan[0].captions[5] == "a train photo number 1 variant 0"
    joined = read_karpathy(ann, images, restval="train")
    assert joined[0].n_images == 18 and joined[0].ids[-1] == "val2014/restval_003.jpg"
    assert [s.name for s in read_karpathy(ann, images, restval="split")][-1] == "restval"
    assert [s.name for s in read_karpathy(ann, images, splits=["test"])] == ["test"]
    with pytest.raises(ConfigError, match="--restval"):
        read_karpathy(ann, images, restval="maybe")
    bad = ann.with_name("few.json")
    bad.write_text(json.dumps({"images": [{"filename": "x.png", "split": "test", "sentences": [{"raw": "a"}]}]}))
    with pytest.raises(InputError, match=r"images\[0\] \(x.png\) has 1"):
        read_karpathy(bad, images)


def test_features_match_a_direct_forward_pass(dataset, tiny_tower, backbone, text_encoder, tmp_path):
    images, ann = dataset
    out = extract_images(images, ann, backbone, tmp_path / "c.h5", restval="train", dtype="float32",
                         text_model=text_encoder, workers=0, batch_size=5, progress=False)
    store = FeatureStore(out)
    assert sorted(store.splits()) == ["dev", "test", "train"]
    plan = {s.name: s for s in read_karpathy(ann, images, restval="train")}
    for name in ("train", "dev", "test"):
        s = store.split(name)
        regions, pooled = _direct(tiny_tower, plan[name].paths)
        got = s.regions(np.arange(s.n_images))
        assert got.shape == (plan[name].n_images, 16, 32) == regions.shape   # (32 / 8)^2 patches
        np.testing.assert_allclose(got, regions, atol=1e-5)
        np.testing.assert_allclose(s.global_features(), pooled, atol=1e-5)
        assert list(s.image_ids()) == plan[name].ids
        assert list(s.raw_captions()) == plan[name].captions
    assert store.has("relevance/test/rougeL") and not store.has("relevance/train/rougeL")
    src = store.attrs["sources"]
    assert src["backbone"]["folder"] == str(tiny_tower.resolve())
    assert src["backbone"]["name"] == "tiny-clip-vision"
    assert src["backbone"]["preprocessing"]["crop_size"] == {"height": 32, "width": 32}
    assert src["images_dir"] == str(images.resolve())
    store.close()
    # float16 storage (the default) rounds the same values
    out16 = extract_images(images, ann, backbone, tmp_path / "h.h5", splits=["test"], text_model=text_encoder,
                           workers=1, progress=False)
    s16 = FeatureStore(out16)
    s = s16.split("test")
    assert s.regions(np.arange(6)).dtype == np.float16
    np.testing.assert_allclose(s.regions(np.arange(6)).astype(np.float32),
                               _direct(tiny_tower, plan["test"].paths)[0], atol=2e-3, rtol=2e-3)
    s16.close()


def _bad_copy(dataset, tmp_path, case):
    images, ann = dataset
    data = json.loads(ann.read_text())
    folder = tmp_path / "imgs"
    shutil.copytree(images, folder)
    e = next(e for e in data["images"] if e["split"] == "test" and e["filename"].endswith(".jpg"))
    target = folder / e["filename"]
    if case == "missing":
        target.unlink()
    elif case == "truncated":
        raw = target.read_bytes()
        target.write_bytes(raw[: len(raw) // 2])
    else:
        target.write_bytes(b"not an image at all")
    new = tmp_path / "dataset_bad.json"
    new.write_text(json.dumps(data))
    return folder, new, target


@pytest.mark.parametrize("case,message", [("missing", "no such image"), ("truncated", "cannot read the image"),
                                          ("garbage", "cannot read the image")])
def test_bad_image_stops_with_nothing_written(dataset, tmp_path, cli, tiny_tower, case, message):
    folder, ann, target = _bad_copy(dataset, tmp_path, case)
    out = tmp_path / "out" / "c.h5"
    code, _, err = cli("extract", "images", "--images", folder, "--annotations", ann, "--backbone", tiny_tower,
                       "--out", out, "--splits", "test", "--relevance", "none", "--workers", "0", "--no-progress")
    assert code == 2, err
    assert str(target) in err and message in err and "--skip-bad" in err
    assert not out.exists() and not out.with_name("c.h5.partial").exists()


@pytest.mark.parametrize("case", ["missing", "truncated"])
def test_skip_bad_leaves_the_image_out(dataset, tmp_path, capsys, backbone, text_encoder, case):
    folder, ann, target = _bad_copy(dataset, tmp_path, case)
    out = extract_images(folder, ann, backbone, tmp_path / "c.h5", splits=["test"], skip_bad=True,
                         text_model=text_encoder, workers=0, batch_size=4, progress=False)
    err = capsys.readouterr().err
    assert "skipped 1 image(s) of split 'test'" in err and target.name in err
    store = FeatureStore(out)
    s = store.split("test")
    assert s.n_images == 5 and len(s.raw_captions()) == 25
    assert target.name not in list(s.image_ids())
    assert store.dataset("relevance/test/rougeL").shape == (25, 5)
    skipped = store.attrs["sources"]["splits"]["test"]["skipped"]
    assert [x["id"] for x in skipped] == [target.name]
    keep = [p for p in read_karpathy(ann, folder, splits=["test"])[0].paths if p != target]
    np.testing.assert_allclose(s.global_features().astype(np.float32),
                               _direct(backbone.folder, keep)[1], atol=2e-3, rtol=2e-3)
    store.close()


def test_cli_extract_info_and_train_vse_hrem(dataset, tmp_path, cli, tiny_tower):
    from featvlr.config import load_config
    from featvlr.training.trainer import train

    images, ann = dataset
    out = tmp_path / "tiny.h5"
    code, stdout, err = cli("extract", "images", "--images", images, "--annotations", ann, "--backbone", tiny_tower,
                            "--out", out, "--restval", "train", "--workers", "1", "--batch-size", "8",
                            "--no-progress")
    assert code == 0, err
    assert f"wrote {out}" in stdout
    code, text, err = cli("info", out)
    assert code == 0, err
    assert "backbone:" in text and "tiny-clip-vision" in text and str(tiny_tower.resolve()) in text
    assert "preprocessing:" in text and "shortest_edge" in text
    for method in ("vse", "hrem"):
        cfg = load_config(None, [f"method={method}", f"data.cache={out}", "data.dataset=tiny", "model.embed_dim=16",
                                 "train.epochs=1", "train.batch_size=8", "train.progress=false",
                                 "eval.dev_scenarios=[i2t, t2i]", "eval.scenarios=[i2t, t2i]"])
        result = train(cfg, tmp_path / f"run_{method}")
        assert (tmp_path / f"run_{method}" / "ckpt" / "last.pt").is_file(), result


@pytest.mark.parametrize("kind,regions,pooled", [("vit", 16, "class token"), ("dinov2", 4, "pooler_output"),
                                                 ("siglip", 16, "pooler_output")])
def test_other_vision_towers(tmp_path, kind, regions, pooled):
    """ViT, DINOv2 and SigLIP towers: patch tokens without the class token, their pooled vector."""
    import transformers as tf

    from featvlr.extract.vision_backbone import VisionBackbone

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model, proc = {
        "vit": (tf.ViTModel(tf.ViTConfig(**common, image_size=32, patch_size=8)),
                tf.ViTImageProcessor(size={"height": 32, "width": 32})),
        "dinov2": (tf.Dinov2Model(tf.Dinov2Config(**common, image_size=28, patch_size=14)),
                   tf.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})),
        "siglip": (tf.SiglipVisionModel(tf.SiglipVisionConfig(**common, image_size=32, patch_size=8)),
                   tf.SiglipImageProcessor(size={"height": 32, "width": 32})),
    }[kind]
    model.save_pretrained(tmp_path / kind)
    proc.save_pretrained(tmp_path / kind)
    bb = VisionBackbone(tmp_path / kind, device="cpu")
    assert (bb.n_regions, bb.dim, bb.global_kind) == (regions, 32, pooled)
