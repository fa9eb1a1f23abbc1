"""Readers of the CIRR, FashionIQ and Shoes JSON layouts into :class:`ComposedSplit` plans.

The layouts are described in :mod:`featvlr.extract.composed`. A reader returns the splits
by image names; :func:`split_rows` turns names into rows of the split's gallery.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.errors import InputError

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
SUBSET_WIDTH = 6


def fashioniq_caption(c1: str, c2: str) -> str:
    """CLIP4Cir's deterministic FashionIQ evaluation caption."""
    return f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"


def fashioniq_variants(c1: str, c2: str) -> list[str]:
    """CLIP4Cir's four FashionIQ training captions, each drawn with probability 1/4."""
    a, b = c1.strip(".?, "), c2.strip(".?, ")
    return [f"{a.capitalize()} and {b}", f"{b.capitalize()} and {a}", a.capitalize(), b.capitalize()]


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


def load_json(path: Path) -> Any:
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
    data = load_json(split_file)
    if isinstance(data, dict):
        names = [str(k) for k in data]
        return names, {str(k): str(v) for k, v in data.items()}
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        names = list(dict.fromkeys(data))
        return names, {n: n for n in names}
    raise InputError(split_file, "expected a JSON list of image names or a {name: path} object")


def resolve_root(root: Path, dataset: str) -> Path:
    if not root.is_dir():
        raise InputError(root, f"no such folder (expected the {dataset} dataset)")
    marker, subdirs = {"cirr": ("captions", ("cirr", "cirr_dataset/cirr")),
                       "fashioniq": ("captions", ("fashionIQ_dataset", "fashioniq")),
                       "shoes": ("annotations", ("shoes",))}[dataset]
    for cand in (root, *(root / s for s in subdirs)):
        if (cand / marker).is_dir():
            return cand
    raise InputError(root, f"no {marker}/ folder here or in {', '.join(subdirs)}/: not a {dataset} dataset folder")


def read_cirr(root: Path, splits: list[str] | None) -> list[ComposedSplit]:
    available = [s for s in ("train", "val", "test1") if (root / "captions" / f"cap.rc2.{s}.json").is_file()]
    wanted = splits or available
    if not wanted:
        raise InputError(root / "captions", "no cap.rc2.{split}.json files")
    out = []
    for split in wanted:
        cap_file = root / "captions" / f"cap.rc2.{split}.json"
        split_file = root / "image_splits" / f"split.rc2.{split}.json"
        data = load_json(cap_file)
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


def read_fashioniq(root: Path, splits: list[str] | None) -> list[ComposedSplit]:
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
                data = load_json(cap_file)
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


def read_shoes(root: Path, splits: list[str] | None) -> list[ComposedSplit]:
    ann = root / "annotations"
    available = [s for s in ("train", "val") if (ann / f"triplet.{s}.json").is_file()]
    wanted = splits or available
    if not wanted:
        raise InputError(ann, "no triplet.{split}.json files")
    out = []
    for split in wanted:
        cap_file, split_file = ann / f"triplet.{split}.json", ann / f"split.{split}.json"
        data = load_json(cap_file)
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


def split_rows(split: ComposedSplit) -> dict[str, np.ndarray]:
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


READERS = {"cirr": read_cirr, "fashioniq": read_fashioniq, "shoes": read_shoes}
