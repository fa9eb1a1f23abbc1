"""Caption x image relevance: ROUGE-L computed the way TERAN does, and relevance files.

TERAN (Messina et al., "Fine-grained visual textual alignment for cross-modal retrieval
using transformer encoders", TOMM 2021) grades every (caption, image) pair of an
evaluation split by the coco-caption ROUGE-L score of the caption against the image's
reference captions, and ranks with NDCG on that grade. The score of caption ``q`` against
image ``j`` with references ``r_1..r_k`` is::

    P = max_i LCS(q, r_i) / |q|        R = max_i LCS(q, r_i) / |r_i|
    F = (1 + b^2) P R / (R + b^2 P)    (b = 1.2; F = 0 when P or R is 0)

on lower-cased tokens split on a single space, ``caption.lower().split(" ")``, exactly as
TERAN's ``evaluate_utils/rouge.py`` does (repeated, leading or trailing spaces make empty
tokens, and a period glued to a word stays part of it). A caption's own image therefore
scores 1.0.

:func:`rouge_l` computes the whole ``[n_captions, n_images]`` matrix with a bit-parallel
LCS (Allison-Dix / Hyyro): tokens are mapped to integers, each query caption becomes one
bit mask per token, and the LCS against every reference is advanced one reference token
at a time with four integer operations, vectorised over (reference, query) pairs with
numpy and spread over threads. A Flickr30K test split (5,000 captions x 1,000 images)
takes a few seconds on two CPU cores. Captions longer than 64 tokens use several 64-bit
words with carry propagation, so any length is exact.

The default tokenisation is TERAN's (``split_on=" "``), so the published relevance files
and NDCG numbers are reproduced. ``split_on=None`` splits on any run of whitespace
(``str.split()``) instead (``featvlr extract precomp --rouge-tokens whitespace``).

:func:`load_relevance` reads the relevance files the papers ship: TERAN's headerless
float32 memory maps (named ``.npy`` although they have no header) and the ordinary
``.npy`` files of RVLR and CoVLR.

A cache holds one matrix per relevance kind, ``relevance/<split>/<kind>``: ``rougeL`` (computed
or imported) and any other kind imported from a published file (e.g. TERAN's SPICE matrices;
computing SPICE needs Java and is not offered). NDCG on kind ``k`` is reported under the
ROUGE-L key with ``_k`` appended (``t2i/ndcg_exp@25_spice``); ROUGE-L keeps the plain keys.
:func:`parse_relevance_specs` reads ``FILE`` / ``KIND=FILE`` arguments.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from featvlr.core.errors import InputError

__all__ = ["rouge_l", "iter_rouge_l", "load_relevance", "rouge_definition", "BETA", "TERAN_SPLIT", "ROUGE_TOKENS",
           "DEFAULT_KIND", "kind_suffix", "check_kind", "parse_relevance_specs"]

DEFAULT_KIND = "rougeL"
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_kind(kind: str, where: str = "--relevance") -> str:
    """``kind`` if it is a valid relevance kind name (a letter, then letters, digits, ``_``)."""
    from featvlr.core.errors import ConfigError

    if not _KIND.fullmatch(kind):
        raise ConfigError(f"{where}: relevance kind {kind!r} must be a name (letters, digits, _), e.g. spice")
    return kind


def kind_suffix(kind: str) -> str:
    """Suffix of the NDCG keys of relevance ``kind`` (none for ROUGE-L, today's keys)."""
    return "" if kind == DEFAULT_KIND else f"_{kind}"


def parse_relevance_specs(specs: Sequence[str | os.PathLike] | str | os.PathLike | None) -> dict[str, Path]:
    """``{kind: file}`` of ``FILE`` (ROUGE-L) and ``KIND=FILE`` arguments (``spice=t.npy``)."""
    if specs is None:
        return {}
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: dict[str, Path] = {}
    for spec in specs:
        text = os.fspath(spec)
        kind, sep, rest = text.partition("=")
        if sep and _KIND.fullmatch(kind) and not Path(text).exists():
            out[kind] = Path(rest)
        else:
            out[DEFAULT_KIND] = Path(text)
    return out

BETA = 1.2
_WORD = 64
TERAN_SPLIT = " "
ROUGE_TOKENS = {"teran": TERAN_SPLIT, "whitespace": None}  # name -> ``split_on``


def rouge_definition(split_on: str | None = TERAN_SPLIT) -> str:
    """The definition recorded beside a computed relevance matrix."""
    tokens = "single-space tokens (TERAN)" if split_on == TERAN_SPLIT else (
        "whitespace-run tokens" if split_on is None else f"tokens split on {split_on!r}")
    return f"ROUGE-L F (coco-caption: lower-case, {tokens}, beta 1.2), TERAN"
def _tokenize(captions: Sequence[str], split_on: str | None) -> tuple[list[np.ndarray], int]:
    """Token ids (starting at 1) of every caption, and the vocabulary size + 1."""
    vocab: dict[str, int] = {}
    out = []
    for caption in captions:
        words = caption.lower().split(split_on)
        out.append(np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in words), dtype=np.int64,
                               count=len(words)))
    return out, len(vocab) + 1


class _References:
    """The reference captions, sorted by decreasing length, as a padded token matrix."""

    def __init__(self, tokens: list[np.ndarray]):
        self.n = len(tokens)
        self.lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        self.order = np.argsort(-self.lengths, kind="stable")
        self.inverse = np.empty_like(self.order)
        self.inverse[self.order] = np.arange(self.n)
        max_len = int(self.lengths.max(initial=0))
        self.matrix = np.zeros((self.n, max_len), dtype=np.int64)
        for row, ref in enumerate(self.order):
            self.matrix[row, :self.lengths[ref]] = tokens[ref]
        sorted_len = self.lengths[self.order]
        # active[j] = how many references have a token at position j (a prefix, being sorted)
        self.active = np.array([(sorted_len > j).sum() for j in range(max_len)], dtype=np.int64)


def _lcs_block(queries: list[np.ndarray], refs: _References, vocab_size: int) -> np.ndarray:
    """LCS length of each query against every reference: ``[n_refs, n_queries]`` int32.

    Bit-parallel LCS: bit p of the state for a (reference, query) pair is 0 where query
    position p has been matched; each reference token t updates ``U = V & M[t]``,
    ``V = (V + U) | (V - U)``, and LCS = the number of zero bits among the query's
    positions. ``V - U`` equals ``V ^ U`` because ``U`` is a subset of ``V``.
    """
    nq = len(queries)
    lengths = np.array([len(q) for q in queries], dtype=np.int64)
    words = max(1, -(-int(lengths.max(initial=0)) // _WORD))
    # masks[w, token, q]: bit p set where query q has `token` at position 64 w + p
    masks = np.zeros((words, vocab_size, nq), dtype=np.uint64)
    for qi, q in enumerate(queries):
        pos = np.arange(len(q))
        np.bitwise_or.at(masks, (pos // _WORD, q, np.full(len(q), qi)),
                         np.left_shift(np.uint64(1), (pos % _WORD).astype(np.uint64)))
    n = refs.n
    state = np.full((words, n, nq), np.iinfo(np.uint64).max, dtype=np.uint64)
    gather = np.empty((n, nq), dtype=np.uint64)
    spare = np.empty((n, nq), dtype=np.uint64)
    if words > 1:
        carry = np.empty((n, nq), dtype=bool)
        flag = np.empty((n, nq), dtype=bool)
    for j, active in enumerate(refs.active):
        tok = refs.matrix[:active, j]
        g, x = gather[:active], spare[:active]
        if words == 1:
            v = state[0, :active]
            np.take(masks[0], tok, axis=0, out=g)
            np.bitwise_and(v, g, out=g)       # U
            np.bitwise_xor(v, g, out=x)       # V - U
            np.add(v, g, out=v)               # V + U (wraps; only low bits are read)
            np.bitwise_or(v, x, out=v)
            continue
        c, f = carry[:active], flag[:active]
        c[...] = False
        for w in range(words):
            v = state[w, :active]
            np.take(masks[w], tok, axis=0, out=g)
            np.bitwise_and(v, g, out=g)
            np.bitwise_xor(v, g, out=x)
            np.add(v, g, out=g)               # V + U in this word
            np.less(g, v, out=f)              # carry out of the word
            np.add(g, c, out=g, casting="unsafe")
            np.logical_or(f, (g == 0) & c, out=c)
            np.bitwise_or(g, x, out=v)
    lcs = np.zeros((n, nq), dtype=np.int32)
    for w in range(words):
        valid = np.clip(lengths - _WORD * w, 0, _WORD).astype(np.uint64)
        low = np.where(valid == _WORD, np.iinfo(np.uint64).max,
                       np.left_shift(np.uint64(1), valid % np.uint64(_WORD)) - np.uint64(1)).astype(np.uint64)
        lcs += np.bitwise_count(np.bitwise_and(np.invert(state[w]), low[None, :]))
    return lcs[refs.inverse]


def _f_score(lcs: np.ndarray, q_len: np.ndarray, r_len: np.ndarray, per_image: int, beta: float) -> np.ndarray:
    """``[n_queries, n_images]`` F from ``lcs`` ``[n_refs, n_queries]`` (refs grouped by image)."""
    n_refs, nq = lcs.shape
    lcs = lcs.reshape(n_refs // per_image, per_image, nq).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = lcs.max(axis=1) / q_len[None, :]
        rec = (lcs / r_len.reshape(-1, per_image, 1)).max(axis=1)
        b2 = beta * beta
        f = (1 + b2) * prec * rec / (rec + b2 * prec)
    f[~((prec > 0) & (rec > 0))] = 0.0
    return np.ascontiguousarray(f.T, dtype=np.float32)


def iter_rouge_l(captions: Sequence[str], captions_per_image: int = 5, *, beta: float = BETA,
                 split_on: str | None = TERAN_SPLIT, rows_per_chunk: int | None = None, block: int | None = None,
                 workers: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, relevance[rows])`` chunks of :func:`rouge_l`, in order.

    Lets a caller stream a large matrix (COCO 5K: 25,000 x 5,000) to disk without holding
    it. Arguments as in :func:`rouge_l`; ``rows_per_chunk`` is the number of query
    captions per yielded chunk (default: about 4M caption pairs per chunk), ``block`` the
    number of queries per unit of work.
    """
    captions = list(captions)
    if captions_per_image < 1 or len(captions) % captions_per_image:
        raise ValueError(f"{len(captions)} captions are not a multiple of captions_per_image={captions_per_image}")
    tokens, vocab_size = _tokenize(captions, split_on)
    refs = _References(tokens)
    q_len = refs.lengths.astype(np.float64)
    n = len(captions)
    if block is None:  # queries per work unit: about 2^19 (reference, query) pairs
        block = int(np.clip((1 << 19) // max(n, 1), 8, 256))
    workers = workers or min(4, os.cpu_count() or 1)
    if rows_per_chunk is None:
        rows_per_chunk = int(np.clip((1 << 22) // max(n, 1), 64, 1024))

    def work(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return idx, _lcs_block([tokens[i] for i in idx], refs, vocab_size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            rows = np.arange(start, stop)
            # long queries need several words: group them so short ones stay fast
            words = np.maximum(1, -(-refs.lengths[rows] // _WORD))
            units = []
            for w in np.unique(words):
                sel = rows[words == w]
                units += [sel[i:i + block] for i in range(0, len(sel), block)]
            lcs = np.empty((n, stop - start), dtype=np.int32)
            for idx, part in pool.map(work, units):
                lcs[:, idx - start] = part
            yield slice(start, stop), _f_score(lcs, q_len[start:stop], refs.lengths, captions_per_image, beta)


def rouge_l(captions: Sequence[str], captions_per_image: int = 5, *, beta: float = BETA,
            split_on: str | None = TERAN_SPLIT, workers: int | None = None) -> np.ndarray:
    """ROUGE-L relevance of every caption against every image, as TERAN defines it.

    Args:
        captions: the split's captions in image order, ``captions_per_image`` consecutive
            captions per image (they are both the queries and the references).
        captions_per_image: references per image (5 for Flickr30K and COCO).
        beta: the F-measure weight (1.2 in coco-caption).
        split_on: token separator; ``" "`` (the default) is TERAN's ``split(" ")``; ``None``
            splits on any run of whitespace.
        workers: threads (default: the CPU count, at most 4).

    Returns:
        ``float32 [n_captions, n_images]``; entry ``(q, j)`` is the coco-caption ROUGE-L F
        of caption ``q`` against the captions of image ``j`` (1.0 for its own image).

    Example::

        >>> rel = rouge_l(["a dog runs", "a dog", "one cat", "a cat sleeps"], captions_per_image=2)
        >>> rel.shape, float(rel[0, 0])
        ((4, 2), 1.0)
    """
    captions = list(captions)
    n_images = len(captions) // captions_per_image if captions_per_image > 0 else 0
    out = np.empty((len(captions), n_images), dtype=np.float32)
    for rows, part in iter_rouge_l(captions, captions_per_image, beta=beta, split_on=split_on, workers=workers):
        out[rows] = part
    return out


def load_relevance(path: str | os.PathLike, n_captions: int, n_images: int) -> np.ndarray:
    """Read a ``[n_captions, n_images]`` relevance matrix in either published format.

    * an ordinary ``.npy`` (RVLR, CoVLR): any float dtype, shape ``[n_captions, n_images]``
      or flat with that many values;
    * a TERAN file: raw float32 values with no header, despite the ``.npy`` name.

    Returns a read-only float32 array (memory-mapped where the file allows it). Raises
    :class:`InputError` naming the file when it is missing, of the wrong size, not float,
    or holds NaN/inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such relevance file")
    want = int(n_captions) * int(n_images)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        arr = None
    if arr is not None:
        if arr.dtype.kind != "f":
            raise InputError(path, f"relevance must be floating point, the file holds {arr.dtype}")
        if arr.shape == (n_captions, n_images) or (arr.ndim == 1 and arr.size == want):
            arr = arr.reshape(n_captions, n_images)
        else:
            raise InputError(path, f"relevance has shape {tuple(arr.shape)}, expected ({n_captions}, {n_images}) "
                             "(captions x images of the split)")
    else:
        size = path.stat().st_size
        if size != 4 * want:
            raise InputError(path, f"not a .npy file, and as a headerless float32 matrix its {size} bytes do not "
                             f"make ({n_captions}, {n_images}) (expected {4 * want} bytes)")
        arr = np.memmap(path, dtype=np.float32, mode="r", shape=(n_captions, n_images))
    step = max(1, (1 << 24) // max(1, n_images))
    for start in range(0, n_captions, step):
        if not np.all(np.isfinite(arr[start:start + step])):
            raise InputError(path, "relevance contains NaN or inf values")
    return arr if arr.dtype == np.float32 else np.asarray(arr, dtype=np.float32)
