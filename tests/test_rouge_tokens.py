"""`featvlr extract precomp --rouge-tokens`: TERAN's single-space tokens by default, any
whitespace on request."""
from __future__ import annotations

import h5py
import numpy as np

from featvlr.retrieval.relevance import rouge_l


def _precomp(root, n=3):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    np.save(root / "test_ims.npy", rng.standard_normal((n, 2, 4)).astype(np.float32))
    words = "a dog cat runs sits on grass red".split()
    caps = []
    for i in range(5 * n):
        toks = list(rng.choice(words, rng.integers(2, 7)))
        caps.append(("  " if i % 2 else " ").join(toks) + ("." if i % 3 == 0 else ""))
    (root / "test_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    return caps


def test_rouge_tokens_flag(tmp_path, cli):
    caps = _precomp(tmp_path / "p")
    got = {}
    for mode in ("teran", "whitespace", None):
        out = tmp_path / f"{mode}.h5"
        args = ["extract", "precomp", "--root", tmp_path / "p", "--out", out, "--no-progress", "--device", "cpu"]
        if mode:
            args += ["--rouge-tokens", mode]
        code, _, err = cli(*args)
        assert code == 0, err
        with h5py.File(out, "r") as f:
            got[mode] = f["relevance/test/rougeL"][()]
    np.testing.assert_array_equal(got[None], got["teran"])
    np.testing.assert_allclose(got["teran"], rouge_l(caps, split_on=" "), atol=1e-6)
    np.testing.assert_allclose(got["whitespace"], rouge_l(caps, split_on=None), atol=1e-6)
    assert np.abs(got["teran"] - got["whitespace"]).max() > 1e-3
    code, _, err = cli("extract", "precomp", "--root", tmp_path / "p", "--out", tmp_path / "x.h5",
                       "--rouge-tokens", "spaces")
    assert code == 2 and "spaces" in err
