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
sentence-transformers CLIP folder) encodes the raw images under ``images_dir``. The
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
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.errors import ConfigError, InputError

__all__ = ["extract_composed", "FeatureTable", "fashioniq_caption", "fashioniq_variants", "DATASETS"]

DATASETS = ("cirr", "fashioniq", "shoes")
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
SUBSET_WIDTH = 6
DTYPES = {"float16": np.float16, "float32": np.float32}


def fashioniq_caption(c1: str, c2: str) -> str:
    """CLIP4Cir's deterministic FashionIQ evaluation caption."""
    return f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"


def fashioniq_variants(c1: str, c2: str) -> list[str]:
    """CLIP4Cir's four FashionIQ training captions, each drawn with probability 1/4."""
    a, b = c1.strip(".?, "), c2.strip(".?, ")
    return [f"{a.capitalize()} and {b}", f"{b.capitalize()} and {a}", a.capitalize(), b.capitalize()]


# -- reading the JSON layouts --------------------------------------------------------------

@dataclass
class ComposedSplit:
    """One composed split, by image names (rows are assigned when the cache is written)."""

    name: str
    gallery: list[str]
    paths: dict[str, str]                 # image name -> path relative to the images folder
    reference: list[str]
    target: list[str | None]
    texts: list[str]
    pair_ids: list[int]
    source: Path
    subsets: list[list[str]] | None = None
    category: list[str] | None = None
    captions: list[tuple[str, str]] | None = None
    variants: list[list[str]] | None = None
    remove_reference: bool = True
    files: list[str] = field(default_factory=list)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _field(entry: Any, key: str, path: Path, index: int, kind=str):
    if not isinstance(entry, dict) or key not in entry:
        raise InputError(path, f"entry {index} has no {key!r} field")
    value = entry[key]
    if kind is str and not (isinstance(value, str) and value.strip()):
        raise InputError(path, f"entry {index}: {key!r} must be a non-empty string")
    return value


def _gallery(split_file: Path) -> tuple[list[str], dict[str, str]]:
    data = _load_json(split_file)
    if isinstance(data, dict):
        names = [str(k) for k in data]
        return names, {str(k): str(v) for k, v in data.items()}
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        names = list(dict.fromkeys(data))
        return names, {n: n for n in names}
    raise InputError(split_file, "expected a JSON list of image names or a {name: path} object")


def _resolve(root: Path, dataset: str) -> Path:
    if not root.is_dir():
        raise InputError(root, f"no such folder (expected the {dataset} dataset)")
    marker, subdirs = {"cirr": ("captions", ("cirr", "cirr_dataset/cirr")),
                       "fashioniq": ("captions", ("fashionIQ_dataset", "fashioniq")),
                       "shoes": ("annotations", ("shoes",))}[dataset]
    for cand in (root, *(root / s for s in subdirs)):
        if (cand / marker).is_dir():
            return cand
    raise InputError(root, f"no {marker}/ folder here or in {', '.join(subdirs)}/: not a {dataset} dataset folder")


def _read_cirr(root: Path, splits: list[str] | None) -> list[ComposedSplit]:
    available = [s for s in ("train", "val", "test1") if (root / "captions" / f"cap.rc2.{s}.json").is_file()]
    wanted = splits or available
    if not wanted:
        raise InputError(root / "captions", "no cap.rc2.{split}.json files")
    out = []
    for split in wanted:
        cap_file = root / "captions" / f"cap.rc2.{split}.json"
        split_file = root / "image_splits" / f"split.rc2.{split}.json"
        data = _load_json(cap_file)
        gallery, paths = _gallery(split_file)
        if not isinstance(data, list):
            raise InputError(cap_file, "expected a JSON list of triplets")
        s = ComposedSplit(split, gallery, paths, [], [], [], [], cap_file, subsets=[], remove_reference=True,
                          files=[str(cap_file), str(split_file)])
        for i, e in enumerate(data):
            s.reference.append(_field(e, "reference", cap_file, i))
            s.target.append(e.get("target_hard") if isinstance(e, dict) and e.get("target_hard") else None)
            s.texts.append(_field(e, "caption", cap_file, i))
            pid = _field(e, "pairid", cap_file, i, kind=int)
            if not isinstance(pid, int):
                raise InputError(cap_file, f"entry {i}: 'pairid' must be an integer")
            s.pair_ids.append(pid)
            members = (e.get("img_set") or {}).get("members", []) if isinstance(e.get("img_set"), dict) else []
            if not isinstance(members, list):
                raise InputError(cap_file, f"entry {i}: 'img_set.members' must be a list")
            s.subsets.append([str(m) for m in members])
        out.append(s)
    return out


def _read_fashioniq(root: Path, splits: list[str] | None) -> list[ComposedSplit]:
    def files(split, cat):
        return root / "captions" / f"cap.{cat}.{split}.json", root / "image_splits" / f"split.{cat}.{split}.json"

    available = [s for s in ("train", "val", "test") if any(files(s, c)[0].is_file() for c in FIQ_CATEGORIES)]
    wanted = splits or available
    if not wanted:
        raise InputError(root / "captions", "no cap.{category}.{split}.json files")
    out = []
    for split in wanted:
        cats = [c for c in FIQ_CATEGORIES if files(split, c)[0].is_file()]
        if not cats:
            raise InputError(files(split, FIQ_CATEGORIES[0])[0],
                             f"no such file (no FashionIQ captions for split {split!r})")
        groups = [cats] if split == "train" else [[c] for c in cats]
        for group in groups:
            name = split if split == "train" else f"{split}_{group[0]}"
            s = ComposedSplit(name, [], {}, [], [], [], [], files(split, group[0])[0], category=[], captions=[],
                              variants=[] if split == "train" else None, remove_reference=False)
            for cat in group:
                cap_file, split_file = files(split, cat)
                gallery, paths = _gallery(split_file)
                for g in gallery:
                    if g not in s.paths:
                        s.gallery.append(g)
                        s.paths[g] = f"{g}"
                s.files += [str(cap_file), str(split_file)]
                data = _load_json(cap_file)
                if not isinstance(data, list):
                    raise InputError(cap_file, "expected a JSON list of triplets")
                for i, e in enumerate(data):
                    s.reference.append(_field(e, "candidate", cap_file, i))
                    s.target.append(e.get("target") if isinstance(e, dict) and e.get("target") else None)
                    caps = _field(e, "captions", cap_file, i, kind=list)
                    if not (isinstance(caps, list) and len(caps) == 2 and all(isinstance(c, str) for c in caps)):
                        raise InputError(cap_file, f"entry {i}: 'captions' must be a list of two strings")
                    c1, c2 = caps
                    s.captions.append((c1, c2))
                    s.texts.append(fashioniq_caption(c1, c2))
                    if s.variants is not None:
                        s.variants.append(fashioniq_variants(c1, c2))
                    s.category.append(cat)
                    s.pair_ids.append(i)
            out.append(s)
    return out


def _read_shoes(root: Path, splits: list[str] | None) -> list[ComposedSplit]:
    ann = root / "annotations"
    available = [s for s in ("train", "val") if (ann / f"triplet.{s}.json").is_file()]
    wanted = splits or available
    if not wanted:
        raise InputError(ann, "no triplet.{split}.json files")
    out = []
    for split in wanted:
        cap_file, split_file = ann / f"triplet.{split}.json", ann / f"split.{split}.json"
        data = _load_json(cap_file)
        gallery, paths = _gallery(split_file)
        if not isinstance(data, list):
            raise InputError(cap_file, "expected a JSON list of triplets")
        s = ComposedSplit(split, gallery, paths, [], [], [], [], cap_file, remove_reference=True,
                          files=[str(cap_file), str(split_file)])
        for i, e in enumerate(data):
            s.reference.append(_field(e, "ReferenceImageName", cap_file, i))
            s.target.append(_field(e, "ImageName", cap_file, i))
            s.texts.append(_field(e, "RelativeCaption", cap_file, i))
            s.pair_ids.append(i)
        out.append(s)
    return out


def _rows(split: ComposedSplit) -> dict[str, np.ndarray]:
    """Integer rows of references, targets and subset members in the split's gallery."""
    index = {n: i for i, n in enumerate(split.gallery)}

    def row(name, what, i, allow_none=False):
        if name is None and allow_none:
            return -1
        if name not in index:
            raise InputError(split.source, f"query {i} ({split.name}): {what} image {name!r} is not in the "
                                           f"split's gallery ({len(index)} images)")
        return index[name]

    out = {
        "reference": np.array([row(n, "reference", i) for i, n in enumerate(split.reference)], dtype=np.int64),
        "target": np.array([row(n, "target", i, allow_none=True) for i, n in enumerate(split.target)],
                           dtype=np.int64),
    }
    if split.subsets is not None:
        width = max([SUBSET_WIDTH] + [len(m) for m in split.subsets])
        sub = np.full((len(split.subsets), width), -1, dtype=np.int64)
        for i, members in enumerate(split.subsets):
            sub[i, :len(members)] = [row(m, "img_set member", i) for m in members]
        out["subsets"] = sub
    return out


# -- image features ------------------------------------------------------------------------

class FeatureTable:
    """Image features keyed by image name, read from ``.npy`` (+ names), ``.npz`` or ``.h5``.

    Args:
        path: the features file.
        names: for an ``.npy``: the names file (one per line, or a JSON list).
        rank: 2 for global vectors ``[N, Dg]``, 3 for augmented views ``[N, K, Dg]``.
    """

    def __init__(self, path: str | os.PathLike, names: str | os.PathLike | None = None, *, rank: int = 2):
        self.path = Path(path)
        self.rank = rank
        if not self.path.is_file():
            raise InputError(self.path, "no such features file")
        suffix = self.path.suffix.lower()
        if suffix == ".npy":
            self.names, self.array = self._from_npy(names)
        elif suffix == ".npz":
            self.names, self.array = self._from_mapping(self._npz_items())
        elif suffix in (".h5", ".hdf5"):
            self.names, self.array = self._from_mapping(self._h5_items())
        else:
            raise InputError(self.path, "unsupported features file: use .npy (with --image-names), .npz or .h5")
        if self.array.dtype.kind != "f":
            raise InputError(self.path, f"features must be floating point, the file holds {self.array.dtype}")
        if self.array.ndim != rank:
            want = "[N, Dg]" if rank == 2 else "[N, K, Dg]"
            raise InputError(self.path, f"features have shape {tuple(self.array.shape)}; expected {want}")
        if len(self.names) != self.array.shape[0]:
            raise InputError(self.path, f"{self.array.shape[0]} feature rows but {len(self.names)} names")
        bad = ~np.isfinite(self.array)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise InputError(self.path, f"the features of {self.names[row]!r} contain NaN or inf values")
        self.index = {n: i for i, n in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise InputError(self.path, "image names are not unique")
        self._by_stem: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.array.shape[-1])

    def _from_npy(self, names):
        if names is None:
            raise InputError(self.path, "an .npy features file needs --image-names (one name per row)")
        names_path = Path(names)
        if not names_path.is_file():
            raise InputError(names_path, "no such image-names file")
        if names_path.suffix.lower() == ".json":
            listed = _load_json(names_path)
            if not (isinstance(listed, list) and all(isinstance(x, str) for x in listed)):
                raise InputError(names_path, "expected a JSON list of image names")
        else:
            try:
                text = names_path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(names_path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            listed = [line.strip() for line in text.split("\n")]
            while listed and listed[-1] == "":
                listed.pop()
            if "" in listed:
                raise InputError(names_path, f"line {listed.index('') + 1} is empty")
        try:
            arr = np.load(self.path, allow_pickle=False)
        except Exception as exc:
            raise InputError(self.path, f"not a readable .npy array ({exc})") from None
        if arr.ndim >= 1 and len(listed) != arr.shape[0]:
            raise InputError(names_path, f"has {len(listed)} names for the {arr.shape[0]} rows of {self.path.name}")
        return listed, arr

    def _npz_items(self):
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:
            raise InputError(self.path, f"not a readable .npz archive ({exc})") from None

    def _h5_items(self):
        import h5py

        items: dict[str, np.ndarray] = {}
        try:
            with h5py.File(self.path, "r") as f:
                def visit(name, obj):
                    if isinstance(obj, h5py.Dataset):
                        items[name] = obj[()]
                f.visititems(visit)
        except OSError as exc:
            raise InputError(self.path, f"not a readable HDF5 file ({exc})") from None
        return items

    def _from_mapping(self, items: dict[str, np.ndarray]):
        if "names" in items and ("features" in items or "feats" in items):
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(items["names"]).ravel()]
            return names, np.asarray(items.get("features", items.get("feats")))
        if not items:
            raise InputError(self.path, "holds no arrays")
        names = list(items)
        shapes = {np.asarray(v).shape for v in items.values()}
        if len(shapes) != 1:
            raise InputError(self.path, f"per-image arrays differ in shape ({sorted(shapes)[:3]}...)")
        return names, np.stack([np.asarray(items[n]) for n in names])

    def lookup(self, names: list[str]) -> np.ndarray:
        """Rows of ``names`` (exact name, else an unambiguous file-stem match)."""
        rows = np.empty(len(names), dtype=np.int64)
        missing = []
        for i, name in enumerate(names):
            r = self.index.get(name)
            if r is None:
                r = self._stem_index().get(_stem(name))
            if r is None or r < 0:
                missing.append(name)
            else:
                rows[i] = r
        if missing:
            raise InputError(self.path, f"{len(missing)} image(s) have no features, e.g. {missing[:3]}")
        return rows

    def covers(self, names: list[str]) -> np.ndarray:
        """Boolean mask: which ``names`` this table has."""
        stems = self._stem_index()
        return np.array([n in self.index or stems.get(_stem(n), -1) >= 0 for n in names], dtype=bool)

    def _stem_index(self) -> dict[str, int]:
        if self._by_stem is None:
            self._by_stem = {}
            for i, n in enumerate(self.names):
                s = _stem(n)
                self._by_stem[s] = -1 if s in self._by_stem else i   # -1 marks an ambiguous stem
        return self._by_stem


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _image_path(dataset: str, images_dir: Path, split: ComposedSplit, name: str) -> Path:
    rel = split.paths.get(name, name)
    if dataset == "fashioniq":
        for ext in (".jpg", ".png", ".jpeg", ""):
            p = images_dir / f"{rel}{ext}"
            if p.is_file():
                return p
        return images_dir / f"{rel}.jpg"
    return images_dir / rel


def _encode_images(model, paths: list[Path], batch_size: int, progress: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(paths), desc="images", unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(paths), batch_size):
            batch = []
            for p in paths[start:start + batch_size]:
                try:
                    with Image.open(p) as im:
                        batch.append(im.convert("RGB"))
                except (OSError, UnidentifiedImageError) as exc:
                    raise InputError(p, f"cannot read the image ({exc})") from None
            out.append(np.asarray(model.encode(batch, batch_size=batch_size, show_progress_bar=False),
                                  dtype=np.float32))
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# -- the extract ---------------------------------------------------------------------------

def extract_composed(dataset: str, root: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     image_features: str | os.PathLike | None = None, image_names: str | os.PathLike | None = None,
                     aug_features: str | os.PathLike | None = None, clip_model: str | os.PathLike | None = None,
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
        images_dir: the raw images for ``clip_model`` (default: the dataset's image folder).
        text_model: the text encoder folder or a loaded
            :class:`~featvlr.sources.text_encoder.TextEncoder` (default: all-MiniLM-L6-v2
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
    from featvlr.store import CacheWriter

    dataset = str(dataset).lower()
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out = Path(out) if out is not None else Path("features") / f"{dataset}.h5"
    if out.exists() and not overwrite:
        raise InputError(out, "the cache exists already; pass --overwrite to replace it")
    if image_features is None and clip_model is None:
        raise ConfigError("give --image-features FILE, or --clip-model DIR (with --images DIR) to encode raw images")
    started = time.time()
    root = _resolve(Path(root), dataset)
    reader = {"cirr": _read_cirr, "fashioniq": _read_fashioniq, "shoes": _read_shoes}[dataset]
    plan = reader(root, list(splits) if splits else None)
    rows = {s.name: _rows(s) for s in plan}

    table = FeatureTable(image_features, image_names) if image_features is not None else None
    aug = FeatureTable(aug_features, image_names, rank=3) if aug_features is not None else None
    if table is not None:
        for s in plan:
            table.lookup(s.gallery)            # fail early on a missing image
    if aug is not None and table is not None and aug.dim != table.dim:
        raise InputError(aug.path, f"augmented views have width {aug.dim}, the image features {table.dim}")
    aug_cover = {s.name: _aug_coverage(aug, s, rows[s.name]["reference"]) for s in plan} if aug is not None else {}

    from featvlr.sources.text_encoder import TextEncoder, check_model_folder

    if clip_model is not None:
        check_model_folder(clip_model)
    image_root = None
    if table is None:
        image_root = Path(images_dir) if images_dir is not None else (
            root.parent if dataset == "cirr" else root / "images")
        for s in plan:
            for name in s.gallery:
                p = _image_path(dataset, image_root, s, name)
                if not p.is_file():
                    raise InputError(p, f"no such image (gallery image {name!r} of split {s.name!r})")
    if isinstance(text_model, TextEncoder):
        encoder = text_model
    else:
        encoder = TextEncoder(text_model if text_model is not None or clip_model is None else clip_model,
                              device=device, batch_size=batch_size)
    clip = encoder.model if (clip_model is not None and text_model is None) else None

    sources: dict[str, Any] = {
        "layout": dataset, "root": str(root.resolve()), "text_model": str(encoder.path.resolve()),
        "image_features": str(Path(image_features).resolve()) if image_features else None,
        "image_names": str(Path(image_names).resolve()) if image_names else None,
        "aug_features": str(Path(aug_features).resolve()) if aug_features else None,
        "clip_model": str(Path(clip_model).resolve()) if clip_model else None,
        "images_dir": str(image_root.resolve()) if image_root else None,
        "splits": {s.name: s.files for s in plan},
    }
    if command is None:
        command = f"featvlr.sources.composed.extract_composed({dataset!r}, {str(root)!r}, {str(out)!r})"
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
                    from featvlr.sources.text_encoder import load_sentence_transformer

                    image_model = clip if clip is not None else load_sentence_transformer(clip_model, device)
                paths = [_image_path(dataset, image_root, s, n) for n in s.gallery]
                feats = _encode_images(image_model, paths, batch_size, progress)
                if not np.all(np.isfinite(feats)):
                    raise InputError(clip_model, "the model produced NaN or inf image features")
            g = f"images/{s.name}"
            w.write(f"{g}/global", np.ascontiguousarray(feats, dtype=np_dtype))
            w.write(f"{g}/ids", list(s.gallery))
            if aug_cover.get(s.name) is not None:
                if aug.dim != feats.shape[1]:
                    raise InputError(aug.path, f"augmented views have width {aug.dim}, the image features "
                                               f"{feats.shape[1]}")
                views = _aug_views(aug, s, aug_cover[s.name], feats)
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
                from featvlr.store import STR_DTYPE

                w.h5.create_dataset(f"{c}/captions", data=np.array(s.captions, dtype=object).reshape(-1, 2),
                                    dtype=STR_DTYPE)
            w.h5[c].attrs["dataset"] = dataset
            w.h5[c].attrs["remove_reference"] = bool(s.remove_reference)
        w.set_attr("dtype", dtype)
        w.set_attr("seconds", round(time.time() - started, 2))
    return out


def _aug_coverage(aug: FeatureTable, split: ComposedSplit, reference: np.ndarray) -> np.ndarray | None:
    """Which gallery images have views; None when the file has none of the split's references.

    Raises :class:`InputError` when it has some of them but not all.
    """
    has = aug.covers(split.gallery)
    ref_rows = np.unique(reference)
    if not has[ref_rows].any():
        return None
    if not has[ref_rows].all():
        missing = [split.gallery[i] for i in ref_rows[~has[ref_rows]]][:3]
        raise InputError(aug.path, f"split {split.name!r}: some reference images have no augmented views, "
                                   f"e.g. {missing}")
    return has


def _aug_views(aug: FeatureTable, split: ComposedSplit, has: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """``[N, K, Dg]`` views for the split's gallery; images without views repeat their plain vector."""
    k = aug.array.shape[1]
    views = np.repeat(np.asarray(feats, dtype=np.float32)[:, None, :], k, axis=1)
    idx = np.flatnonzero(has)
    views[idx] = aug.array[aug.lookup([split.gallery[i] for i in idx])]
    return views
