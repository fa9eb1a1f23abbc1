"""Writing the demo dataset: the precomp and CIRR layouts, ``truth/`` and ``README.txt``."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.demo.captions import captions
from featvlr.demo.composed import SET_SIZE, composed_split
from featvlr.demo.features import global_features, make_world, region_features
from featvlr.demo.scenes import sample_scene
from featvlr.demo.vocabulary import CATEGORIES, COLOURS, RELATIONS, SCENES

DEMO_FORMAT = "featvlr-demo"
DEMO_FORMAT_VERSION = 1
META_NAME = "demo_meta.json"
PRECOMP_SPLITS = ("train", "dev", "test")
CIRR_SPLITS = ("train", "val", "test1")


def _relpath(split: str, name: str, set_id: int) -> str:
    if split == "train":
        return f"./train/{set_id % 100}/{name}.png"
    return f"./{'dev' if split == 'val' else split}/{name}.png"


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def dump_json(path: Path, obj, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without timestamps: the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def generate(root: Path, p: dict) -> dict:
    """Write every file of the dataset into ``root``; return the sizes for the metadata."""
    ss = np.random.SeedSequence([int(p["seed"]), 0x5EED_DE30])
    world_ss, precomp_ss, cirr_ss = ss.spawn(3)
    w = make_world(np.random.default_rng(world_ss), p["region_dim"], p["global_dim"])
    truth = root / "truth"
    truth.mkdir()
    sizes: dict[str, Any] = {"precomp": {}, "cirr": {}}
    next_id = 1
    for split, split_ss in zip(PRECOMP_SPLITS, precomp_ss.spawn(len(PRECOMP_SPLITS))):
        n = int(p[f"n_{split}"])
        scene_rng, text_rng, vis_rng = (np.random.default_rng(s) for s in split_ss.spawn(3))
        scenes = [sample_scene(scene_rng) for _ in range(n)]
        caps = [c for sc in scenes for c in captions(text_rng, sc)]
        ims, owners = region_features(vis_rng, w, scenes, int(p["n_regions"]), float(p["visual_noise"]))
        ids = list(range(next_id, next_id + n))
        next_id += n
        np.save(root / f"{split}_ims.npy", ims)
        _write_lines(root / f"{split}_caps.txt", caps)
        _write_lines(root / f"{split}_ids.txt", [str(i) for i in ids])
        dump_json(truth / f"{split}_scenes.json",
                   [{"id": i, **sc, "regions": own} for i, sc, own in zip(ids, scenes, owners)], indent=None)
        sizes["precomp"][split] = {"images": n, "captions": len(caps)}

    if p["composed"]:
        cirr = root / "cirr"
        (cirr / "captions").mkdir(parents=True)
        (cirr / "image_splits").mkdir()
        split_ss = cirr_ss.spawn(len(CIRR_SPLITS) + 1)
        all_names: list[str] = []
        all_scenes: list[dict] = []
        pairid, set_id = 0, 0
        n_key = {"train": "n_cirr_train", "val": "n_cirr_val", "test1": "n_cirr_test"}
        for split, s_ss in zip(CIRR_SPLITS, split_ss):
            cs = composed_split(np.random.default_rng(s_ss), split, int(p[n_key[split]]),
                                 int(p["cirr_pairs_per_set"][split]), pairid, set_id)
            pairid += len(cs.triplets)
            n_sets = len(cs.names) // SET_SIZE
            dump_json(cirr / "captions" / f"cap.rc2.{split}.json", cs.triplets)
            gallery = {name: _relpath(split, name, set_id + j // SET_SIZE) for j, name in enumerate(cs.names)}
            dump_json(cirr / "image_splits" / f"split.rc2.{split}.json", gallery)
            dump_json(truth / f"cirr_{split}_edits.json", cs.edits, indent=None)
            set_id += n_sets
            all_names += cs.names
            all_scenes += cs.scenes
            sizes["cirr"][split] = {"triplets": len(cs.triplets), "images": len(cs.names), "sets": n_sets}
        G, A = global_features(np.random.default_rng(split_ss[-1]), w, all_scenes, int(p["n_aug"]))
        _save_npz(cirr / "image_features.npz", dict(zip(all_names, G)))
        if p["n_aug"] > 0:
            _save_npz(cirr / "image_features_aug.npz", dict(zip(all_names, A)))
        dump_json(truth / "cirr_scenes.json", dict(zip(all_names, all_scenes)), indent=None)
    return sizes


def readme(p: dict, sizes: dict) -> str:
    pre = sizes["precomp"]
    lines = [
        "featvlr demo dataset",
        "====================",
        "",
        "A small synthetic vision-language dataset written by featvlr.demo.make_demo_dataset",
        f"(seed {p['seed']}). The same parameters and seed always give the same bytes.",
        "",
        "World: scenes of one type (" + ", ".join(SCENES) + ")",
        f"holding 2-5 objects of distinct categories ({len(CATEGORIES)} categories: "
        + ", ".join(CATEGORIES) + "),",
        "each with a colour (" + ", ".join(COLOURS) + ") and a size (small, medium, large),",
        "and 1-2 relations (" + ", ".join(RELATIONS) + ").",
        "",
        "Precomp layout (SCAN/BUTD; read with featvlr.extract.precomp.extract_precomp):",
    ]
    for split in PRECOMP_SPLITS:
        lines.append(f"  {split}_ims.npy   float32 [{pre[split]['images']}, {p['n_regions']}, {p['region_dim']}]"
                     f"  region features")
        lines.append(f"  {split}_caps.txt  {pre[split]['captions']} captions, 5 consecutive lines per image")
        lines.append(f"  {split}_ids.txt   {pre[split]['images']} image ids, one per line")
    lines += [
        "",
        "  Regions: one per detected object (sometimes a second, noisier part region), the rest",
        "  background clutter; objects are missed (small ones more often), spurious regions occur,",
        "  colour and size are weakly visible, and features pass through a fixed random tanh layer",
        "  plus noise. The captions are the more informative modality by design.",
        "",
    ]
    if p["composed"]:
        lines += ["Composed split, CIRR layout, under cirr/ (read with",
                  "featvlr.extract.composed.extract_composed('cirr', ...)):"]
        for split in CIRR_SPLITS:
            c = sizes["cirr"][split]
            lines.append(f"  captions/cap.rc2.{split}.json  {c['triplets']} triplets"
                         + (" (no targets)" if split == "test1" else ""))
            lines.append(f"  image_splits/split.rc2.{split}.json  {c['images']} images in {c['sets']} sets of 6")
        lines += [
            f"  image_features.npz      name -> float32 [{p['global_dim']}] global (CLIP-like) vector",
        ]
        if p["n_aug"] > 0:
            lines.append(f"  image_features_aug.npz  name -> float32 [{p['n_aug']}, {p['global_dim']}] augmented views")
        lines += [
            "",
            "  Each set holds a base scene and 5 variants, each one edit away from the base",
            "  (replace an object, change a colour or size, add or remove an object, change the",
            "  setting). A triplet's target differs from its reference by exactly the edit its",
            "  caption states. There are no image files; the relative paths are nominal.",
            "",
        ]
    lines += [
        "truth/: the scene graph of every image (with the object behind each region) and the",
        "edit behind every composed pair, for analysis only.",
        "demo_meta.json: parameters, seed, sizes and the list of files.",
        "",
    ]
    return "\n".join(lines)
