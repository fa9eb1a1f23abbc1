"""CIRR, FashionIQ and Shoes (composed image retrieval) into a feature cache.

Inputs are the JSON layouts the CLIP4Cir / MLCL code reads (``root`` may be the dataset
folder itself or its parent):

* **CIRR** ``cirr/captions/cap.rc2.{train,val,test1}.json`` (``pairid``, ``reference``,
  ``target_hard``, ``caption``, ``img_set.members``) and
  ``cirr/image_splits/split.rc2.{split}.json`` (``{name: relative path}``; the gallery is
  every key). test1 has no targets.
* **FashionIQ** ``fashionIQ_dataset/captions/cap.{dress,shirt,toptee}.{split}.json``
  (``candidate`` = reference, ``target``, ``captions: [c1, c2]``) and
  ``image_splits/split.{category}.{split}.json`` (a list of names). The three categories
  are trained together, so ``train`` is one split whose gallery is the union of the
  categories; validation and test are per category: ``val_dress``, ``val_shirt``,
  ``val_toptee`` (each its own gallery).
* **Shoes** ``shoes/annotations/triplet.{train,val}.json`` (``ReferenceImageName``,
  ``ImageName`` = target, ``RelativeCaption``) and ``annotations/split.{split}.json``.

Global image features come from a file (``image_features``): an ``.npy`` ``[N, Dg]`` with
a names file (``image_names``: one name per line, or a JSON list), or an ``.npz`` / ``.h5``
holding either ``names`` + ``features`` arrays or one vector per image keyed by its name.
A name that is not found exactly is matched by its file stem (``dev-1-0-img0.png`` and
``dev-1-0-img0`` match) when that is unambiguous. Alternatively ``clip_model`` (a local
sentence-transformers CLIP folder) or ``backbone`` (any local vision model folder) encodes
the raw images under ``images_dir`` through :mod:`~featvlr.extract.vision_backbone`. The
modifier texts are encoded into pooled vectors by the text encoder: the CLIP text tower
when ``clip_model`` is given and ``text_model`` is not, else ``text_model`` (default
all-MiniLM-L6-v2). Optional ``aug_features`` ``[N, K, Dg]`` (keyed like the image
features) give K augmented views of the reference images for MLCL.

Cache layout of a composed split ``<s>`` (Q queries, N gallery images, T = Q texts, or 4Q
for FashionIQ train)::

    images/<s>/global          [N, Dg]     gallery features, in the split file's order
    images/<s>/ids             [N]         image names
    images/<s>/global_aug      [N, K, Dg]  augmented views (when aug_features covers the split's
                                           reference images; other rows repeat the plain vector)
    texts/<s>/pooled           [T, Dt]     modifier-text vectors; row q is query q's text
    texts/<s>/raw              [T]         those texts, as encoded
    texts/<s>/offsets          [T + 1]     zeros (no token features for composed splits)
    texts/<s>/image_index      [T]         the reference row of the text's query (so the store
                                           validates)
    composed/<s>/reference     [Q] int64   row of the reference image in images/<s>
    composed/<s>/target        [Q] int64   row of the target (-1 where unknown: CIRR test1)
    composed/<s>/text          [Q] or [Q, V] int64  text rows of each query (column 0: the
                                           evaluation text; V > 1 only for FashionIQ train)
    composed/<s>/pair_ids      [Q] int64   CIRR pairid; else the triplet's index in its file
    composed/<s>/subsets       [Q, 6] int64  CIRR only: rows of img_set.members, -1 padded
    composed/<s>/category      [Q] str     FashionIQ only: dress | shirt | toptee
    composed/<s>/captions      [Q, 2] str  FashionIQ only: the two raw captions

``composed/<s>`` attributes: ``dataset`` and ``remove_reference`` (True for CIRR and Shoes,
whose protocols drop the reference from the ranked gallery; False for FashionIQ).

FashionIQ captions: the text of a query is CLIP4Cir's deterministic evaluation caption
``"{c1 stripped of '.?, ', capitalized} and {c2 stripped}"``. For ``train`` the texts are the
four captions CLIP4Cir draws from at random (each with p = 1/4), stored in blocks of Q
rows: ``"C1 and c2"`` (rows 0..Q-1, the evaluation caption), ``"C2 and c1"``, ``"C1"``,
``"C2"``; ``composed/train/text[q] = [q, Q + q, 2Q + q, 3Q + q]``, so a trainer draws a
column uniformly.

This module is the extract driver; the layouts are read by
:mod:`~featvlr.extract.composed_readers`, image features by
:mod:`~featvlr.extract.feature_table` and raw images encoded by
:mod:`~featvlr.extract.clip_images`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.errors import ConfigError, InputError
from featvlr.extract.clip_images import encode_images, image_path
from featvlr.extract.composed_readers import READERS, fashioniq_caption, fashioniq_variants, resolve_root, split_rows
from featvlr.extract.feature_table import FeatureTable, aug_coverage, aug_views

__all__ = ["extract_composed", "FeatureTable", "fashioniq_caption", "fashioniq_variants", "DATASETS"]

DATASETS = ("cirr", "fashioniq", "shoes")
DTYPES = {"float16": np.float16, "float32": np.float32}


def extract_composed(dataset: str, root: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     image_features: str | os.PathLike | None = None, image_names: str | os.PathLike | None = None,
                     aug_features: str | os.PathLike | None = None, clip_model: str | os.PathLike | None = None,
                     backbone: str | os.PathLike | None = None,
                     images_dir: str | os.PathLike | None = None, text_model: str | os.PathLike | None = None,
                     dtype: str = "float32", overwrite: bool = False, progress: bool = True,
                     splits: list[str] | None = None, batch_size: int = 256, device: str | None = None,
                     command: str | None = None) -> Path:
    """Extract a CIRR, FashionIQ or Shoes dataset into a feature cache (layout: module docstring).

    Args:
        dataset: ``"cirr"``, ``"fashioniq"`` or ``"shoes"``.
        root: the dataset folder (or its parent).
        out: the cache to write; ``None`` gives ``features/<dataset>.h5``.
        image_features: global image features by name (``.npy`` + ``image_names``, ``.npz``, ``.h5``).
        image_names: names of the ``.npy`` rows (also used for an ``.npy`` ``aug_features``).
        aug_features: ``[N, K, Dg]`` augmented views of reference images, keyed like the features.
        clip_model: a local sentence-transformers CLIP folder: encodes raw images (when no
            ``image_features``) and the texts (when no ``text_model``).
        backbone: a local vision model folder encoding the raw images (its pooled vector);
            takes precedence over ``clip_model`` for images.
        images_dir: the raw images for ``clip_model`` / ``backbone`` (default: the dataset's
            image folder).
        text_model: the text encoder folder or a loaded
            :class:`~featvlr.extract.text_encoder.TextEncoder` (default: all-MiniLM-L6-v2
            unless ``clip_model``).
        dtype: ``"float32"`` or ``"float16"`` storage.
        overwrite: replace an existing cache.
        progress: show progress bars on stderr.
        splits: base split names to extract (``train``, ``val``, ``test1``...); default all found.
        batch_size: texts / images per forward pass.
        device: encoder device; ``None`` uses CUDA when present.
        command: the command line recorded in the cache.

    Returns:
        The path of the written cache.
    """
    from featvlr.cache.store import CacheWriter

    dataset = str(dataset).lower()
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out = Path(out) if out is not None else Path("features") / f"{dataset}.h5"
    if out.exists() and not overwrite:
        raise InputError(out, "the cache exists already; pass --overwrite to replace it")
    if image_features is None and clip_model is None and backbone is None:
        raise ConfigError("give --image-features FILE, or --clip-model DIR or --backbone DIR (with --images DIR) "
                          "to encode raw images")
    started = time.time()
    root = resolve_root(Path(root), dataset)
    plan = READERS[dataset](root, list(splits) if splits else None)
    rows = {s.name: split_rows(s) for s in plan}

    table = FeatureTable(image_features, image_names) if image_features is not None else None
    aug = FeatureTable(aug_features, image_names, rank=3) if aug_features is not None else None
    if table is not None:
        for s in plan:
            table.lookup(s.gallery)            # fail early on a missing image
    if aug is not None and table is not None and aug.dim != table.dim:
        raise InputError(aug.path, f"augmented views have width {aug.dim}, the image features {table.dim}")
    aug_cover = {s.name: aug_coverage(aug, s, rows[s.name]["reference"]) for s in plan} if aug is not None else {}

    from featvlr.extract.text_encoder import TextEncoder, check_model_folder

    if clip_model is not None:
        check_model_folder(clip_model)
    if backbone is not None:
        from featvlr.extract.vision_backbone import resolve_backbone_folder

        resolve_backbone_folder(backbone)
    image_root = None
    if table is None:
        image_root = Path(images_dir) if images_dir is not None else (
            root.parent if dataset == "cirr" else root / "images")
        for s in plan:
            for name in s.gallery:
                p = image_path(dataset, image_root, s, name)
                if not p.is_file():
                    raise InputError(p, f"no such image (gallery image {name!r} of split {s.name!r})")
    if isinstance(text_model, TextEncoder):
        encoder = text_model
    else:
        encoder = TextEncoder(text_model if text_model is not None or clip_model is None else clip_model,
                              device=device, batch_size=batch_size)

    sources: dict[str, Any] = {
        "layout": dataset, "root": str(root.resolve()), "text_model": str(encoder.path.resolve()),
        "image_features": str(Path(image_features).resolve()) if image_features else None,
        "image_names": str(Path(image_names).resolve()) if image_names else None,
        "aug_features": str(Path(aug_features).resolve()) if aug_features else None,
        "clip_model": str(Path(clip_model).resolve()) if clip_model else None,
        "backbone": None,
        "images_dir": str(image_root.resolve()) if image_root else None,
        "splits": {s.name: s.files for s in plan},
    }
    if command is None:
        command = f"featvlr.extract.composed.extract_composed({dataset!r}, {str(root)!r}, {str(out)!r})"
    np_dtype = DTYPES[dtype]
    with CacheWriter(out, overwrite=overwrite, command=command, sources=sources, text_encoder=encoder.name,
                     text_dim=encoder.dim) as w:
        image_model = None
        for s in plan:
            r = rows[s.name]
            if table is not None:
                feats = table.array[table.lookup(s.gallery)]
            else:
                if image_model is None:
                    from featvlr.extract.vision_backbone import VisionBackbone

                    image_model = VisionBackbone(backbone if backbone is not None else clip_model, device=device,
                                                 amp=dtype == "float16")
                    sources["backbone"] = image_model.provenance()
                    w.set_attr("sources", sources)
                paths = [image_path(dataset, image_root, s, n) for n in s.gallery]
                feats = encode_images(image_model, paths, batch_size, progress)
            g = f"images/{s.name}"
            w.write(f"{g}/global", np.ascontiguousarray(feats, dtype=np_dtype))
            w.write(f"{g}/ids", list(s.gallery))
            if aug_cover.get(s.name) is not None:
                if aug.dim != feats.shape[1]:
                    raise InputError(aug.path, f"augmented views have width {aug.dim}, the image features "
                                               f"{feats.shape[1]}")
                views = aug_views(aug, s, aug_cover[s.name], feats)
                w.write(f"{g}/global_aug", views.astype(np_dtype))
            q = len(s.texts)
            texts = [v[k] for k in range(4) for v in s.variants] if s.variants else list(s.texts)
            n_var = len(texts) // max(q, 1) if q else 1
            t = f"texts/{s.name}"
            w.write(f"{t}/pooled", encoder.encode_pooled(texts).astype(np_dtype))
            w.write(f"{t}/raw", texts)
            w.write(f"{t}/offsets", np.zeros(len(texts) + 1, dtype=np.int64))
            w.write(f"{t}/image_index", np.tile(r["reference"], n_var))
            c = f"composed/{s.name}"
            w.write(f"{c}/reference", r["reference"])
            w.write(f"{c}/target", r["target"])
            text_rows = np.arange(q, dtype=np.int64)
            w.write(f"{c}/text", text_rows if n_var == 1 else text_rows[:, None] + q * np.arange(n_var))
            w.write(f"{c}/pair_ids", np.asarray(s.pair_ids, dtype=np.int64))
            if "subsets" in r:
                w.write(f"{c}/subsets", r["subsets"])
            if s.category is not None:
                w.write(f"{c}/category", list(s.category))
            if s.captions is not None:
                from featvlr.cache.store import STR_DTYPE

                w.h5.create_dataset(f"{c}/captions", data=np.array(s.captions, dtype=object).reshape(-1, 2),
                                    dtype=STR_DTYPE)
            w.h5[c].attrs["dataset"] = dataset
            w.h5[c].attrs["remove_reference"] = bool(s.remove_reference)
        w.set_attr("dtype", dtype)
        w.set_attr("seconds", round(time.time() - started, 2))
    return out
