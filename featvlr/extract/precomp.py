"""SCAN/BUTD "precomp" folders (Flickr30K, COCO) into a feature cache.

Input, for each split (``train``, ``dev``, ``test``, ``testall``...) in one folder::

    {split}_ims.npy    float [N, R, D] region features (BUTD: R = 36, D = 2048);
                       [N, D] single-vector features are accepted and stored as global vectors
    {split}_caps.txt   UTF-8, one caption per line, exactly 5 consecutive lines per image
    {split}_ids.txt    optional, one image id per line

Output (see :mod:`featvlr.cache.store` for the full layout)::

    images/<split>/regions      [N, R, D] float16|float32   (or images/<split>/global [N, D])
    images/<split>/ids          [N] from {split}_ids.txt, when present
    texts/<split>/tokens        [T, Dt]  token features of all captions, flat
    texts/<split>/offsets       [5N + 1] int64
    texts/<split>/pooled        [5N, Dt] pooled sentence embeddings
    texts/<split>/image_index   [5N] int64, caption c -> image c // 5
    texts/<split>/raw           [5N] the captions (stripped)
    relevance/<split>/rougeL    [5N, N] float32, evaluation splits only

The ``.npy`` is memory-mapped and streamed by chunks of rows, so a COCO-sized file never
sits in memory whole; every chunk is checked for NaN/inf. All inputs are checked before
anything is written, and the cache is written atomically (``<out>.partial`` then renamed),
so bad input leaves no output behind.

Relevance (``relevance=``): ``"compute"`` computes TERAN's ROUGE-L
(:func:`featvlr.retrieval.relevance.rouge_l`) for every evaluation split (all but ``train``);
``"none"`` skips it; a path imports a TERAN or RVLR/CoVLR file for the one evaluation split;
``"test=a.npy,dev=compute,train=none"`` chooses per split (unnamed evaluation splits are
computed).
"""
from __future__ import annotations

import mmap
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featvlr.core.errors import ConfigError, InputError
from featvlr.core.fileio import map_npy

__all__ = ["extract_precomp", "read_captions", "find_splits", "default_out_path", "write_texts", "write_relevance",
           "relevance_plan"]

DTYPES = {"float16": np.float16, "float32": np.float32}
CAPTIONS_PER_IMAGE = 5
TEXT_CHUNK = 2048


def default_out_path(root: str | os.PathLike) -> Path:
    """``features/<basename of root>.h5`` (``.../f30k_precomp`` gives ``features/f30k_precomp.h5``)."""
    root = Path(root).resolve()
    name = root.name if root.name != "precomp" else root.parent.name
    return Path("features") / f"{name}.h5"


def find_splits(root: Path) -> list[str]:
    """Split names with a ``{split}_ims.npy`` in ``root``, sorted."""
    return sorted(p.name[: -len("_ims.npy")] for p in root.glob("*_ims.npy") if p.is_file())


def read_captions(path: str | os.PathLike) -> list[str]:
    """Captions of a ``{split}_caps.txt``, one per line, stripped.

    Raises :class:`InputError` naming the line for a line that is not UTF-8 or is empty.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read the captions: {exc.strerror or exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"line {number} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        text = text.strip()
        if not text:
            raise InputError(path, f"line {number} is an empty caption")
        out.append(text)
    return out


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def open_features(path: Path) -> np.ndarray:
    """Memory-map a float ``.npy`` of rank 2 or 3, or raise :class:`InputError`."""
    if not path.is_file():
        raise InputError(path, "no such features file")
    arr = map_npy(path, "features")
    if arr.dtype.kind != "f":
        raise InputError(path, f"features must be floating point, the file holds {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InputError(path, f"features have rank {arr.ndim} (shape {tuple(arr.shape)}); expected "
                               "[N, R, D] regions or [N, D] vectors")
    if arr.shape[0] == 0 or 0 in arr.shape:
        raise InputError(path, f"features are empty (shape {tuple(arr.shape)})")
    return arr


@dataclass
class _Split:
    name: str
    ims: Path
    caps: Path
    ids: Path | None
    features: np.ndarray
    captions: list[str]
    image_ids: list[str] | None
    relevance: str | Path | None = None   # "compute", a file, or None
    relevance_array: np.ndarray | None = field(default=None, repr=False)
    # Other imported relevance kinds (``--relevance test:spice=FILE``): kind -> (file, array).
    relevance_kinds: dict = field(default_factory=dict, repr=False)

    @property
    def n_images(self) -> int:
        return int(self.features.shape[0])


def _relevance_plan(spec: str | os.PathLike | None, splits: list[str], *, kinds: dict | None = None
                    ) -> dict[str, str | Path | None]:
    """Per split: ``"compute"``, a :class:`Path`, or ``None`` (the ROUGE-L matrix). Entries
    ``SPLIT:KIND=FILE`` import another relevance kind (e.g. ``test:spice=FILE``) into ``kinds``
    (``{split: {kind: Path}}``); without ``kinds`` they are refused."""
    evals = [s for s in splits if s != "train"]
    plan: dict[str, str | Path | None] = {s: None for s in splits}
    spec = "none" if spec is None else spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    text = str(spec).strip()
    if text.lower() in ("compute", "none"):
        for s in evals:
            plan[s] = "compute" if text.lower() == "compute" else None
        return plan
    entries = [e.strip() for e in text.split(",")] if "=" in text else []
    if entries and all(re.fullmatch(r"[^=\s]+=.+", e) for e in entries):
        for s in evals:
            plan[s] = "compute"
        for entry in entries:
            split, value = entry.split("=", 1)
            split, _, kind = split.partition(":")
            if kind and kind != "rougeL":
                from featvlr.retrieval.relevance import check_kind

                if kinds is None or value.lower() in ("compute", "none"):
                    raise ConfigError(f"--relevance {entry}: relevance kinds other than rougeL are imported from "
                                      "a file by `extract precomp` (SPLIT:KIND=FILE)")
                if split not in plan:
                    raise ConfigError(f"--relevance names split {split!r}, which is not extracted")
                kinds.setdefault(split, {})[check_kind(kind)] = Path(value)
                continue
            if split not in plan:
                raise ConfigError(f"--relevance names split {split!r}, which is not extracted "
                                  f"(splits: {', '.join(splits)})")
            plan[split] = None if value.lower() == "none" else "compute" if value.lower() == "compute" else Path(value)
        return plan
    if len(evals) != 1:
        raise ConfigError(f"--relevance {text}: a relevance file belongs to one split, and this extract has "
                          f"{len(evals)} evaluation splits ({', '.join(evals) or 'none'}); "
                          "write SPLIT=FILE, e.g. test=f30k-test-rougeL.npy")
    plan[evals[0]] = Path(text)
    return plan


def resolve_root(root: str | os.PathLike) -> Path:
    """``root``, or its ``precomp/`` sub-folder when only that holds ``*_ims.npy`` files."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder (expected a SCAN/BUTD precomp folder with {split}_ims.npy files)")
    if not find_splits(root) and (root / "precomp").is_dir() and find_splits(root / "precomp"):
        return root / "precomp"
    return root


def _check_inputs(root: Path, splits: list[str] | None, relevance) -> list[_Split]:
    """Every check that needs no model and writes nothing."""
    found = find_splits(root)
    if splits is None:
        if not found:
            raise InputError(root, "no {split}_ims.npy files here: not a SCAN/BUTD precomp folder")
        splits = found
    kinds: dict[str, dict[str, Path]] = {}
    plan = _relevance_plan(relevance, list(splits), kinds=kinds)
    out = []
    for name in splits:
        ims, caps, ids = root / f"{name}_ims.npy", root / f"{name}_caps.txt", root / f"{name}_ids.txt"
        if not ims.is_file():
            raise InputError(ims, f"no such file (split {name!r}; splits found here: {', '.join(found) or 'none'})")
        if not caps.is_file():
            raise InputError(caps, f"no such file (the captions of split {name!r})")
        features = open_features(ims)
        captions = read_captions(caps)
        n = features.shape[0]
        if len(captions) != CAPTIONS_PER_IMAGE * n:
            raise InputError(caps, f"has {len(captions)} captions for the {n} images of {ims.name}; expected exactly "
                                   f"{CAPTIONS_PER_IMAGE} per image ({CAPTIONS_PER_IMAGE * n})")
        image_ids = None
        if ids.is_file():
            image_ids = _read_lines(ids)
            if len(image_ids) != n:
                raise InputError(ids, f"has {len(image_ids)} ids for the {n} images of {ims.name}")
        split = _Split(name, ims, caps, ids if image_ids is not None else None, features, captions, image_ids,
                       relevance=plan[name])
        if isinstance(split.relevance, Path):
            from featvlr.retrieval.relevance import load_relevance

            split.relevance_array = load_relevance(split.relevance, len(captions), n)
        if kinds.get(name):
            from featvlr.retrieval.relevance import load_relevance

            split.relevance_kinds = {k: (p, load_relevance(p, len(captions), n)) for k, p in kinds[name].items()}
        out.append(split)
    return out


def _release(arr: np.ndarray, start: int, stop: int) -> None:
    """Drop the pages of rows ``[start, stop)`` of a memory-mapped array from this process."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    begin = int(getattr(arr, "offset", 0)) % mmap.ALLOCATIONGRANULARITY + start * row
    end = min(len(mm), begin + (stop - start) * row)
    aligned = begin - begin % mmap.PAGESIZE
    try:
        mm.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)
    except (OSError, ValueError):
        pass


def _progress(progress: bool, total: int, desc: str, unit: str):
    """A bar on a terminal, plain lines when stderr is a file or a pipe (``unit`` names the items)."""
    from featvlr.core.runlog import progress_bar

    return progress_bar(total, f"{desc} ({unit})", enabled=progress, stream=sys.stderr)


def _write_images(w, split: _Split, dtype, chunk_bytes: int, progress: bool) -> None:
    src = split.features
    key = f"images/{split.name}/regions" if src.ndim == 3 else f"images/{split.name}/global"
    dset = w.create(key, tuple(src.shape), dtype)
    row_bytes = int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize
    rows = max(1, int(chunk_bytes) // row_bytes)
    with _progress(progress, src.shape[0], f"{split.name} images", "img") as bar:
        for start in range(0, src.shape[0], rows):
            stop = min(src.shape[0], start + rows)
            chunk = np.array(src[start:stop])
            bad = ~np.isfinite(chunk)
            if bad.any():
                row = start + int(np.argwhere(bad)[0][0])
                raise InputError(split.ims, f"image row {row} contains NaN or inf values")
            out = chunk.astype(dtype, copy=False)
            if out.dtype != chunk.dtype and not np.all(np.isfinite(out)):
                row = start + int(np.argwhere(~np.isfinite(out))[0][0])
                raise InputError(split.ims, f"image row {row} overflows {np.dtype(dtype).name}; use --dtype float32")
            dset[start:stop] = out
            del chunk, out, bad
            _release(src, start, stop)
            bar.update(stop - start)
    if split.image_ids is not None:
        w.write(f"images/{split.name}/ids", split.image_ids)


def _write_texts(w, split: _Split, encoder, dtype, progress: bool) -> None:
    n = len(split.captions)
    g = f"texts/{split.name}"
    dim = encoder.dim
    pooled = w.create(f"{g}/pooled", (n, dim), dtype)
    offsets = np.zeros(n + 1, dtype=np.int64)
    tokens = None
    if encoder.has_tokens:
        from featvlr.cache.store import row_chunks

        chunks = row_chunks((max(64, 16 * n), dim), np.dtype(dtype).itemsize)
        tokens = w.h5.create_dataset(f"{g}/tokens", shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=chunks)
    with _progress(progress, n, f"{split.name} captions", "cap") as bar:
        for start, tok, off, pool in encoder.iter_encode(split.captions, chunk=TEXT_CHUNK):
            stop = start + pool.shape[0]
            pooled[start:stop] = pool.astype(dtype)
            offsets[start + 1: stop + 1] = offsets[start] + off[1:]
            if tokens is not None:
                base = tokens.shape[0]
                tokens.resize(base + tok.shape[0], axis=0)
                tokens[base:] = tok.astype(dtype)
            bar.update(stop - start)
    w.write(f"{g}/offsets", offsets)
    w.write(f"{g}/image_index", np.arange(n, dtype=np.int64) // CAPTIONS_PER_IMAGE)
    w.write(f"{g}/raw", split.captions)


def _write_relevance(w, split: _Split, progress: bool, split_on: str | None = " ") -> str | None:
    n_txt, n_img = len(split.captions), split.n_images
    key = f"relevance/{split.name}/rougeL"
    if split.relevance is None:
        return None
    dset = w.create(key, (n_txt, n_img), np.float32)
    with _progress(progress, n_txt, f"{split.name} relevance", "cap") as bar:
        if split.relevance_array is not None:
            step = max(1, (1 << 24) // max(1, n_img))
            for start in range(0, n_txt, step):
                dset[start:start + step] = split.relevance_array[start:start + step]
                bar.update(min(step, n_txt - start))
            return str(split.relevance)
        from featvlr.retrieval.relevance import iter_rouge_l, rouge_definition

        for rows, block in iter_rouge_l(split.captions, CAPTIONS_PER_IMAGE, split_on=split_on):
            dset[rows] = block
            bar.update(rows.stop - rows.start)
    dset.attrs["definition"] = rouge_definition(split_on)
    return "computed"


# The caption and relevance half of a cache split, shared with featvlr.extract.images: ``split``
# needs ``name``, ``captions`` (5 per image), ``n_images``, ``relevance`` and ``relevance_array``.
def write_texts(w, split, encoder, dtype, progress: bool) -> None:
    """Caption tokens, offsets, pooled vectors, image index and raw text of ``split``."""
    _write_texts(w, split, encoder, dtype, progress)


def write_relevance(w, split, progress: bool, split_on: str | None = " ") -> str | None:
    """``relevance/<split>/rougeL`` as planned (computed with ROUGE-L tokens split on
    ``split_on``, imported or none); what was done."""
    return _write_relevance(w, split, progress, split_on)


relevance_plan = _relevance_plan


def extract_precomp(root: str | os.PathLike, out: str | os.PathLike | None = None, *,
                    splits: list[str] | None = None, text_model: str | os.PathLike | None = None,
                    dtype: str = "float16", overwrite: bool = False, relevance: str | os.PathLike = "compute",
                    batch_size: int = 256, device: str | None = None, progress: bool = True,
                    command: str | None = None, chunk_bytes: int = 64 << 20, rouge_split_on: str | None = " "
                    ) -> Path:
    """Extract a SCAN/BUTD precomp folder into a feature cache.

    Args:
        root: the folder holding ``{split}_ims.npy`` and ``{split}_caps.txt`` (a VSE-infinity
            style ``precomp/`` sub-folder is found too).
        out: the cache to write; ``None`` gives ``features/<basename of root>.h5``.
        splits: the splits to extract; ``None`` takes every ``{split}_ims.npy`` found.
        text_model: a local sentence-transformers / Hugging Face folder, or a loaded
            :class:`~featvlr.extract.text_encoder.TextEncoder`; ``None`` uses all-MiniLM-L6-v2.
        dtype: ``"float16"`` or ``"float32"`` storage for region and text features.
        overwrite: replace an existing cache (it stays intact until the new one is complete).
        relevance: ``"compute"``, ``"none"``, a relevance file for the single evaluation
            split, or ``"SPLIT=FILE|compute|none,..."`` (see the module docstring).
        batch_size: captions per text-encoder forward pass.
        device: text-encoder device; ``None`` uses CUDA when present.
        progress: show progress bars on stderr.
        command: the command line recorded in the cache (default: this call).
        chunk_bytes: bytes of ``.npy`` rows read at a time (bounds memory use).
        rouge_split_on: token separator of the computed ROUGE-L (``" "``: TERAN's, the
            default; ``None``: any run of whitespace).

    Returns:
        The path of the written cache.

    Raises:
        InputError: missing or malformed input, or an existing cache without ``overwrite``.
    """
    from featvlr.cache.store import CacheWriter

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    out = Path(out) if out is not None else default_out_path(root)
    root = resolve_root(root)
    if out.exists() and not overwrite:
        raise InputError(out, "the cache exists already; pass --overwrite to replace it")
    started = time.time()
    plan = _check_inputs(root, list(splits) if splits else None, relevance)

    from featvlr.extract.text_encoder import TextEncoder

    encoder = (text_model if isinstance(text_model, TextEncoder)
               else TextEncoder(text_model, device=device, batch_size=batch_size))
    sources = {
        "layout": "scan-precomp",
        "root": str(root.resolve()),
        "text_model": str(encoder.path.resolve()),
        "splits": {s.name: {"images": str(s.ims.resolve()), "captions": str(s.caps.resolve()),
                            "ids": str(s.ids.resolve()) if s.ids else None} for s in plan},
    }
    if command is None:
        command = f"featvlr.extract.precomp.extract_precomp({str(root)!r}, {str(out)!r}, dtype={dtype!r})"
    np_dtype = DTYPES[dtype]
    with CacheWriter(out, overwrite=overwrite, command=command, sources=sources, text_encoder=encoder.name,
                     text_dim=encoder.dim) as w:
        timings: dict[str, dict[str, float]] = {}
        for split in plan:
            t0 = time.perf_counter()
            _write_images(w, split, np_dtype, chunk_bytes, progress)
            t1 = time.perf_counter()
            _write_texts(w, split, encoder, np_dtype, progress)
            t2 = time.perf_counter()
            rel = _write_relevance(w, split, progress, rouge_split_on)
            for kind, (path, arr) in split.relevance_kinds.items():
                w.write(f"relevance/{split.name}/{kind}", np.ascontiguousarray(arr, dtype=np.float32))
                sources["splits"][split.name][f"relevance_{kind}"] = str(path)
            t3 = time.perf_counter()
            sources["splits"][split.name]["relevance"] = rel
            timings[split.name] = {"images": round(t1 - t0, 3), "texts": round(t2 - t1, 3),
                                   "relevance": round(t3 - t2, 3)}
        w.set_attr("sources", sources)
        w.set_attr("stage_seconds", timings)
        w.set_attr("dtype", dtype)
        w.set_attr("seconds", round(time.time() - started, 2))
    return out
