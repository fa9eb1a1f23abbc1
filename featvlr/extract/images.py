"""Raw images with a Karpathy split JSON (Flickr30K, COCO) into a feature cache.

Input: an image folder and the split file that raw-image pipelines read
(``dataset_flickr30k.json``, ``dataset_coco.json``)::

    {"images": [{"filename": "1000092795.jpg", "filepath": "val2014" (COCO only),
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "Two young guys ..."}, ...]}, ...]}

An image is ``<images>/<filepath>/<filename>``, or ``<images>/<filename>`` when that is where
it is. Splits are named as in the SCAN precomp caches: ``train``, ``dev`` (Karpathy ``val``),
``test``; COCO's ``restval`` is left out unless ``restval="train"`` joins it to train
(the VSE++ / SCAN "RC" training set) or ``restval="split"`` keeps it as a split of its own.
The first 5 sentences of each image are its captions (COCO has a few images with 6 or 7).

Output: the layout of :mod:`featvlr.extract.precomp`, with ``images/<split>/regions`` the
backbone's patch tokens ``[N, P, D]``, ``images/<split>/global`` its pooled vector
``[N, G]`` and ``images/<split>/ids`` the image paths relative to the image folder (see
:mod:`featvlr.extract.vision_backbone`). Captions go through the text encoder and relevance
is computed or imported exactly as ``extract precomp`` does. The cache's ``sources`` record
the backbone's name, folder and preprocessing, the image folder and the skipped files.

Bad images (missing, not an image, truncated): by default the first one stops the extract
with :class:`InputError` naming it, and nothing is written (the cache is written to
``<out>.partial`` and renamed only when complete). With ``skip_bad`` every bad image is left
out with its captions, and the skipped files are counted, named on stderr and recorded.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.errors import ConfigError, InputError
from featvlr.extract.composed_readers import load_json
from featvlr.extract.precomp import CAPTIONS_PER_IMAGE, DTYPES, relevance_plan, write_relevance, write_texts

__all__ = ["read_karpathy", "extract_images", "ImageSplit", "RESTVAL"]

SPLIT_NAMES = {"train": "train", "val": "dev", "test": "test"}
RESTVAL = ("skip", "train", "split")


@dataclass
class ImageSplit:
    """One split of a Karpathy JSON: image files, their ids, and 5 captions per image."""

    name: str
    paths: list[Path]
    ids: list[str]
    captions: list[str]
    entries: list[int]                  # index of each image in the JSON's images list
    relevance: str | Path | None = None
    relevance_array: np.ndarray | None = field(default=None, repr=False)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (id, reason)

    @property
    def n_images(self) -> int:
        return len(self.paths)

    def keep(self, rows: list[int]) -> None:
        """Keep only images ``rows`` (ascending) and their captions (and relevance)."""
        caps = [r * CAPTIONS_PER_IMAGE + k for r in rows for k in range(CAPTIONS_PER_IMAGE)]
        if self.relevance_array is not None:
            self.relevance_array = np.asarray(self.relevance_array)[np.ix_(caps, rows)]
        self.paths = [self.paths[r] for r in rows]
        self.ids = [self.ids[r] for r in rows]
        self.entries = [self.entries[r] for r in rows]
        self.captions = [self.captions[c] for c in caps]


def read_karpathy(annotations: str | os.PathLike, images: str | os.PathLike, *, restval: str = "skip",
                  splits: list[str] | None = None) -> list[ImageSplit]:
    """The splits of a Karpathy JSON, in the order train, dev, test (, restval).

    Args:
        annotations: ``dataset_flickr30k.json`` / ``dataset_coco.json``.
        images: the image folder.
        restval: ``"skip"`` (leave COCO's restval out), ``"train"`` (join it to train) or
            ``"split"`` (a split named ``restval``).
        splits: cache split names to keep (``train``, ``dev``, ``test``); default all.

    Raises:
        InputError: the file is not a Karpathy JSON, an entry lacks a field, an image has
            fewer than 5 captions, or a wanted split has no image.
    """
    path, root = Path(annotations), Path(images)
    if restval not in RESTVAL:
        raise ConfigError(f"--restval {restval!r}: choose one of {', '.join(RESTVAL)}")
    if not root.is_dir():
        raise InputError(root, "no such image folder")
    data = load_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError(path, "not a Karpathy split file: expected an object with an 'images' list")
    names = dict(SPLIT_NAMES, restval={"train": "train", "split": "restval"}.get(restval))
    out: dict[str, ImageSplit] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InputError(path, f"images[{i}] is not an object")
        filename, split = e.get("filename"), e.get("split")
        if not (isinstance(filename, str) and filename.strip()):
            raise InputError(path, f"images[{i}] has no 'filename'")
        if split not in names:
            raise InputError(path, f"images[{i}] ({filename}): split {split!r} is not one of "
                                   f"{', '.join(names)}")
        name = names[split]
        if name is None or (splits and name not in splits):
            continue
        sentences = e.get("sentences")
        raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences] if isinstance(sentences, list) else []
        raws = [r.strip() for r in raws if isinstance(r, str) and r.strip()]
        if len(raws) < CAPTIONS_PER_IMAGE:
            raise InputError(path, f"images[{i}] ({filename}) has {len(raws)} non-empty sentences[].raw; "
                                   f"expected at least {CAPTIONS_PER_IMAGE}")
        rel = f"{e['filepath']}/{filename}" if isinstance(e.get("filepath"), str) and e["filepath"] else filename
        if not (root / rel).is_file() and (root / filename).is_file():
            rel = filename
        s = out.setdefault(name, ImageSplit(name, [], [], [], []))
        s.paths.append(root / rel)
        s.ids.append(rel)
        s.captions += raws[:CAPTIONS_PER_IMAGE]
        s.entries.append(i)
    for wanted in splits or []:
        if wanted not in out:
            raise InputError(path, f"no image of split {wanted!r} (splits here: {', '.join(out) or 'none'})")
    if not out:
        raise InputError(path, "no images in the wanted splits")
    order = ["train", "dev", "test", "restval"]
    return [out[n] for n in order if n in out]


def default_out_path(annotations: str | os.PathLike) -> Path:
    """``features/<name>.h5`` from ``dataset_<name>.json``."""
    stem = Path(annotations).stem
    return Path("features") / f"{stem[len('dataset_'):] if stem.startswith('dataset_') else stem}.h5"


def _say(message: str) -> None:
    print(f"featvlr: {message}", file=sys.stderr, flush=True)


def _shrink(w, key: str, n: int) -> None:
    """Keep the first ``n`` rows of dataset ``key`` (a new contiguous dataset replaces it)."""
    old = w.h5[key]
    new = w.create(key + ".kept", (n, *old.shape[1:]), old.dtype)
    step = max(1, (64 << 20) // max(1, int(np.prod(old.shape[1:])) * old.dtype.itemsize))
    for start in range(0, n, step):
        new[start:start + step] = old[start:min(n, start + step)]
    del w.h5[key]
    w.h5.move(key + ".kept", key)


def _repack(w) -> None:
    """Rewrite the partial file without the space of shrunk datasets."""
    import h5py

    w.h5.close()
    tmp = w.partial.with_name(w.partial.name + ".repack")
    try:
        with h5py.File(w.partial, "r") as src, h5py.File(tmp, "w") as dst:
            for key in src:
                src.copy(src[key], dst, name=key)
        os.replace(tmp, w.partial)
    finally:
        if tmp.exists():
            tmp.unlink()
        w.h5 = h5py.File(w.partial, "a")


def _write_images(w, split: ImageSplit, backbone, dtype, *, batch_size: int, workers: int, skip_bad: bool,
                  progress: bool) -> bool:
    """Encode the split's files into ``images/<split>/{regions,global,ids}``; drop bad ones
    (``skip_bad``) or raise. Returns whether datasets were shrunk."""
    from featvlr.core.runlog import progress_bar

    present = [r for r, p in enumerate(split.paths) if p.is_file()]   # missing files were checked before
    n = len(present)
    g = f"images/{split.name}"
    regions = w.create(f"{g}/regions", (n, backbone.n_regions, backbone.dim), dtype)
    pooled = w.create(f"{g}/global", (n, backbone.global_dim), dtype)
    kept: list[int] = []
    files = [split.paths[r] for r in present]
    with progress_bar(n, f"{split.name} images (img)", enabled=progress, stream=sys.stderr) as bar:
        for rows, reg, glob, bad in backbone.iter_encode(files, batch_size=batch_size, workers=workers,
                                                          dtype=dtype):
            for row, why in bad:
                r = present[row]
                if not skip_bad:
                    raise InputError(split.paths[r], f"{why} (image {split.ids[r]!r} of split {split.name!r}; "
                                                     "--skip-bad leaves such images out)")
                split.skipped.append((split.ids[r], why))
            if rows:
                start = len(kept)
                regions[start:start + len(rows)] = reg
                pooled[start:start + len(rows)] = glob
                kept += [present[row] for row in rows]
            bar.update(len(rows) + len(bad))
    found = set(present)
    missing = [(split.ids[r], "no such image") for r in range(len(split.paths)) if r not in found]
    split.skipped = missing + split.skipped
    if not kept:
        raise InputError(split.paths[0].parent, f"no readable image in split {split.name!r}")
    shrunk = len(kept) < n
    if shrunk:
        _shrink(w, f"{g}/regions", len(kept))
        _shrink(w, f"{g}/global", len(kept))
    split.keep(kept)
    w.write(f"{g}/ids", split.ids)
    return shrunk


def extract_images(images: str | os.PathLike, annotations: str | os.PathLike, backbone: Any,
                   out: str | os.PathLike | None = None, *, restval: str = "skip", splits: list[str] | None = None,
                   text_model: Any = None, dtype: str = "float16", relevance: str | os.PathLike = "compute",
                   skip_bad: bool = False, batch_size: int = 64, workers: int | None = None,
                   text_batch_size: int = 256, device: str | None = None, overwrite: bool = False,
                   progress: bool = True, command: str | None = None) -> Path:
    """Extract raw images and a Karpathy split JSON into a feature cache.

    Args:
        images: the image folder.
        annotations: the Karpathy JSON (``dataset_flickr30k.json``, ``dataset_coco.json``).
        backbone: a local vision model folder, or a loaded
            :class:`~featvlr.extract.vision_backbone.VisionBackbone`.
        out: the cache to write; ``None`` gives ``features/<name>.h5`` (``dataset_<name>.json``).
        restval: COCO's restval: ``"skip"``, ``"train"`` (joined to train) or ``"split"``.
        splits: cache splits to extract (``train``, ``dev``, ``test``); default all.
        text_model: text encoder folder or a loaded ``TextEncoder`` (default all-MiniLM-L6-v2).
        dtype: ``"float16"`` or ``"float32"`` storage.
        relevance: as :func:`featvlr.extract.precomp.extract_precomp`.
        skip_bad: leave unreadable or missing images out (counted, named and recorded)
            instead of stopping with :class:`InputError`.
        batch_size: images per backbone forward pass.
        workers: DataLoader processes decoding images; ``None``: up to 8, one core left free.
        text_batch_size: captions per text-encoder forward pass.
        device: backbone and text-encoder device; ``None`` uses CUDA when present.
        overwrite: replace an existing cache (kept until the new one is complete).
        progress: show progress bars on stderr.
        command: the command line recorded in the cache.

    Returns:
        The path of the written cache.
    """
    from featvlr.cache.store import CacheWriter

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out = Path(out) if out is not None else default_out_path(annotations)
    if out.exists() and not overwrite:
        raise InputError(out, "the cache exists already; pass --overwrite to replace it")
    started = time.time()
    plan = read_karpathy(annotations, images, restval=restval, splits=list(splits) if splits else None)
    for split in plan:
        for p, i in zip(split.paths, split.ids):
            if not p.is_file() and not skip_bad:
                raise InputError(p, f"no such image (image {i!r} of split {split.name!r} in {Path(annotations).name}; "
                                    "--skip-bad leaves missing images out)")
    rel_plan = relevance_plan(relevance, [s.name for s in plan])
    for split in plan:
        split.relevance = rel_plan[split.name]
        if isinstance(split.relevance, Path):
            from featvlr.retrieval.relevance import load_relevance

            split.relevance_array = load_relevance(split.relevance, len(split.captions), split.n_images)

    from featvlr.extract.text_encoder import TextEncoder
    from featvlr.extract.vision_backbone import VisionBackbone

    bb = (backbone if isinstance(backbone, VisionBackbone)
          else VisionBackbone(backbone, device=device, amp=dtype == "float16"))
    encoder = (text_model if isinstance(text_model, TextEncoder)
               else TextEncoder(text_model, device=device, batch_size=text_batch_size))
    if workers is None:
        workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    sources: dict[str, Any] = {
        "layout": "karpathy-json", "annotations": str(Path(annotations).resolve()),
        "images_dir": str(Path(images).resolve()), "restval": restval,
        "backbone": bb.provenance(), "text_model": str(encoder.path.resolve()), "splits": {},
    }
    if command is None:
        command = (f"featvlr.extract.images.extract_images({str(images)!r}, {str(annotations)!r}, "
                   f"{str(bb.requested)!r}, {str(out)!r}, dtype={dtype!r})")
    np_dtype = DTYPES[dtype]
    with CacheWriter(out, overwrite=overwrite, command=command, sources=sources, text_encoder=encoder.name,
                     text_dim=encoder.dim) as w:
        timings: dict[str, dict[str, float]] = {}
        shrunk = False
        for split in plan:
            t0 = time.perf_counter()
            shrunk |= _write_images(w, split, bb, np_dtype, batch_size=batch_size, workers=workers,
                                    skip_bad=skip_bad, progress=progress)
            t1 = time.perf_counter()
            write_texts(w, split, encoder, np_dtype, progress)
            t2 = time.perf_counter()
            rel = write_relevance(w, split, progress)
            timings[split.name] = {"images": round(t1 - t0, 3), "texts": round(t2 - t1, 3),
                                   "relevance": round(time.perf_counter() - t2, 3)}
            sources["splits"][split.name] = {"images": split.n_images, "relevance": rel,
                                             "skipped": [{"id": i, "reason": why} for i, why in split.skipped]}
            if split.skipped:
                shown = "; ".join(f"{i} ({why})" for i, why in split.skipped[:5])
                more = f"; and {len(split.skipped) - 5} more" if len(split.skipped) > 5 else ""
                _say(f"skipped {len(split.skipped)} image(s) of split {split.name!r}: {shown}{more}")
        if shrunk:
            _repack(w)
        w.set_attr("sources", sources)
        w.set_attr("stage_seconds", timings)
        w.set_attr("dtype", dtype)
        w.set_attr("seconds", round(time.time() - started, 2))
    return out
