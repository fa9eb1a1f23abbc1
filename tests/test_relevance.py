"""ROUGE-L relevance against an independent pure-Python implementation, and relevance files."""
from __future__ import annotations

import random

import numpy as np
import pytest

from featvlr.core.errors import InputError
from featvlr.retrieval.relevance import iter_rouge_l, load_relevance, rouge_l


def naive_lcs(a: list[str], b: list[str]) -> int:
    """Textbook O(len(a) len(b)) dynamic programme."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def naive_rouge(captions: list[str], per_image: int = 5, beta: float = 1.2, sep=None) -> np.ndarray:
    """coco-caption ROUGE-L as TERAN's compute_relevance applies it, one pair at a time."""
    n_img = len(captions) // per_image
    out = np.zeros((len(captions), n_img))
    for q, cand in enumerate(captions):
        tc = cand.lower().split(sep)
        for j in range(n_img):
            prec, rec = [], []
            for ref in captions[j * per_image:(j + 1) * per_image]:
                tr = ref.lower().split(sep)
                lcs = naive_lcs(tr, tc)
                prec.append(lcs / len(tc) if tc else 0.0)
                rec.append(lcs / len(tr) if tr else 0.0)
            p, r = max(prec), max(rec)
            out[q, j] = (1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p and r else 0.0
    return out


def random_captions(n: int, seed: int, long_every: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "a A the dog Dog cat man woman runs sits on in grass red blue big small . ,".split()
    out = []
    for i in range(n):
        length = rng.randint(1, 14)
        if long_every and i % long_every == 3:
            length = rng.choice([64, 65, 100, 140])     # one, two and three 64-bit words
        out.append(" ".join(rng.choice(words) for _ in range(length)))
    return out


def test_matches_naive_and_own_image_is_one():
    caps = random_captions(60, seed=1)
    got = rouge_l(caps)
    want = naive_rouge(caps)
    assert got.dtype == np.float32 and got.shape == (60, 12)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[np.arange(60), np.arange(60) // 5], 1.0)


def test_long_captions_use_several_words():
    caps = random_captions(40, seed=2, long_every=7)
    assert max(len(c.split()) for c in caps) > 128
    np.testing.assert_allclose(rouge_l(caps), naive_rouge(caps), rtol=0, atol=1e-6)


def test_known_values_and_case():
    caps = ["A dog runs", "a cat sits", "the dog runs fast", "two birds", "a dog",
            "one cat", "nothing alike here", "x", "y", "z"]
    rel = rouge_l(caps, captions_per_image=5)
    # "one cat" vs image 0: best LCS 1 ("cat"); P = 1/2, R = max(1/3, 1/3, 1/4, 0, 0) = 1/3
    p, r, b2 = 0.5, 1 / 3, 1.44
    assert rel[5, 0] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-6)
    assert rel[6, 0] == 0.0                      # no common token
    assert rel[0, 0] == 1.0 and rel[5, 1] == 1.0


@pytest.mark.parametrize("per_image", [1, 3])
def test_other_captions_per_image_and_workers(per_image):
    caps = random_captions(24, seed=3)[: 24 - 24 % per_image]
    np.testing.assert_allclose(rouge_l(caps, per_image, workers=1), naive_rouge(caps, per_image), atol=1e-6)


def test_chunks_equal_whole_matrix():
    caps = random_captions(50, seed=4)
    whole = rouge_l(caps)
    parts = list(iter_rouge_l(caps, rows_per_chunk=7, block=3))
    assert [p[0].start for p in parts] == list(range(0, 50, 7))
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole)


def test_teran_single_space_split():
    caps = ["a  dog ", "a dog", "dog a", "the cat", "cat"] + ["one", "two  three", "four", "five", "six "]
    np.testing.assert_allclose(rouge_l(caps, split_on=" "), naive_rouge(caps, sep=" "), atol=1e-6)
    np.testing.assert_allclose(rouge_l(caps, split_on=None), naive_rouge(caps), atol=1e-6)


def teran_rouge(captions: list[str], per_image: int = 5) -> np.ndarray:
    """TERAN's rule verbatim in spirit: ``c.lower().split(" ")``, LCS, max P and max R, beta 1.2."""
    n_img = len(captions) // per_image
    out = np.zeros((len(captions), n_img), dtype=np.float32)
    for q, cand in enumerate(captions):
        tc = cand.lower().split(" ")
        for j in range(n_img):
            prec, rec = [], []
            for ref in captions[j * per_image:(j + 1) * per_image]:
                tr = ref.lower().split(" ")
                lcs = naive_lcs(tr, tc)
                prec.append(lcs / float(len(tc)))
                rec.append(lcs / float(len(tr)))
            p, r = max(prec), max(rec)
            out[q, j] = ((1 + 1.2 ** 2) * p * r) / float(r + 1.2 ** 2 * p) if p != 0 and r != 0 else 0.0
    return out


def irregular_captions(n: int, seed: int) -> list[str]:
    """Captions with double, leading and trailing spaces and periods glued to words."""
    rng = random.Random(seed)
    words = "a A the dog Dog cat man woman runs sits on in grass red blue big small".split()
    out = []
    for _ in range(n):
        toks = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.5:
            toks[-1] += "."                                # glued period
        text = ""
        for i, t in enumerate(toks):
            text += (" " * rng.choice([1, 1, 1, 2, 3]) if i else "") + t
        if rng.random() < 0.3:
            text = " " + text
        if rng.random() < 0.4:
            text += " " * rng.choice([1, 2])
        out.append(text)
    return out


def test_default_is_teran_rule_on_irregular_spacing():
    caps = irregular_captions(80, seed=11)
    assert any("  " in c for c in caps) and any(c.endswith(" ") for c in caps) and any(c.endswith(".") for c in caps)
    want = teran_rouge(caps, 5)
    np.testing.assert_allclose(rouge_l(caps, captions_per_image=5), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([b for _, b in iter_rouge_l(caps, 5, rows_per_chunk=9)]), want,
                               rtol=0, atol=1e-6)
    # the whitespace variant differs on such captions, and is still available
    loose = rouge_l(caps, split_on=None)
    assert np.abs(loose - want).max() > 1e-3
    np.testing.assert_allclose(loose, naive_rouge(caps), atol=1e-6)


def test_bad_caption_count():
    with pytest.raises(ValueError, match="multiple"):
        rouge_l(["a", "b", "c"], captions_per_image=5)


# -- relevance files -----------------------------------------------------------------------

def test_load_teran_headerless_memmap(tmp_path):
    rel = np.random.default_rng(0).random((10, 2)).astype(np.float32)
    path = tmp_path / "f30k-test-rougeL.npy"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=rel.shape)
    mm[:] = rel
    mm.flush()
    del mm
    with pytest.raises(ValueError):
        np.load(path)                            # really headerless
    np.testing.assert_array_equal(load_relevance(path, 10, 2), rel)


def test_load_ordinary_npy(tmp_path):
    rel = np.random.default_rng(1).random((10, 2))
    np.save(tmp_path / "a.npy", rel)
    got = load_relevance(tmp_path / "a.npy", 10, 2)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, rel.astype(np.float32))
    np.save(tmp_path / "flat.npy", rel.astype(np.float32).ravel())   # RVLR reshapes (n_caps, -1)
    np.testing.assert_array_equal(load_relevance(tmp_path / "flat.npy", 10, 2), rel.astype(np.float32))


@pytest.mark.parametrize("case, match", [
    ("missing", "no such relevance file"),
    ("headerless_size", "bytes do not make"),
    ("shape", r"has shape \(2, 10\)"),
    ("int", "floating point"),
    ("nan", "NaN or inf"),
])
def test_load_relevance_errors(tmp_path, case, match):
    path = tmp_path / "rel.npy"
    if case == "headerless_size":
        np.zeros(19, np.float32).tofile(path)
    elif case == "shape":
        np.save(path, np.zeros((2, 10), np.float32))
    elif case == "int":
        np.save(path, np.zeros((10, 2), np.int32))
    elif case == "nan":
        a = np.zeros((10, 2), np.float32)
        a[7, 1] = np.nan
        a.tofile(path)
    with pytest.raises(InputError, match=match) as info:
        load_relevance(path, 10, 2)
    assert str(path) in str(info.value)
