"""`featvlr extract precomp`: exact round trips, text features against the model, bad input."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from featvlr.cache.store import FeatureStore
from featvlr.core.errors import ConfigError, InputError
from featvlr.extract.precomp import extract_precomp
from featvlr.retrieval.relevance import rouge_l

WORDS = "a the dog cat man woman runs sits on in grass red blue big small near water".split()


def make_precomp(root, splits=(("train", 4), ("test", 6)), seed=0, regions=4, dim=8, ids=True):
    """A tiny SCAN precomp folder: {split}_ims.npy, {split}_caps.txt (5 per image), _ids.txt."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in splits:
        ims = rng.standard_normal((n, regions, dim)).astype(np.float32)
        caps = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(5 * n)]
        np.save(root / f"{split}_ims.npy", ims)
        (root / f"{split}_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
        if ids:
            (root / f"{split}_ids.txt").write_text("\n".join(f"{split}{i}" for i in range(n)) + "\n")
        data[split] = (ims, caps)
    return data


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, text_encoder):
    root = tmp_path_factory.mktemp("f30k_precomp")
    data = make_precomp(root)
    out = extract_precomp(root, root.parent / "c32.h5", text_model=text_encoder, dtype="float32", progress=False)
    return root, data, out


def test_regions_round_trip_exactly(extracted):
    root, data, out = extracted
    store = FeatureStore(out)
    assert store.splits() == ["test", "train"]
    for split, (ims, caps) in data.items():
        s = store.split(split)
        got = s.regions(slice(None))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ims)
        assert s.raw_captions() == caps
        np.testing.assert_array_equal(s.image_index(), np.arange(len(caps)) // 5)
        assert s.image_ids() == [f"{split}{i}" for i in range(len(ims))]


def test_text_features_match_the_model(extracted, text_encoder):
    _, data, out = extracted
    model = text_encoder.model
    caps = data["test"][1]
    s = FeatureStore(out).split("test")
    counts = [len(ids) for ids in model.tokenizer(caps, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    np.testing.assert_array_equal(s.token_lengths(), counts)
    np.testing.assert_allclose(s.pooled(), model.encode(caps), atol=2e-5)
    ref_tokens = model.encode(caps, output_value="token_embeddings")
    for got, want in zip(s.tokens(np.arange(len(caps))), ref_tokens):
        np.testing.assert_allclose(got, want.numpy(), atol=2e-5)


def test_relevance_only_for_evaluation_splits(extracted):
    _, data, out = extracted
    s = FeatureStore(out).split("test")
    np.testing.assert_array_equal(s.relevance(), rouge_l(data["test"][1]))
    assert FeatureStore(out).split("train").relevance() is None


def test_provenance(extracted):
    root, _, out = extracted
    attrs = FeatureStore(out).attrs
    assert attrs["text_encoder"] == "sentence-transformers/all-MiniLM-L6-v2" and attrs["text_dim"] == 384
    assert attrs["sources"]["root"] == str(root.resolve())
    assert attrs["sources"]["splits"]["test"]["relevance"] == "computed"
    assert attrs["sources"]["splits"]["test"]["images"].endswith("test_ims.npy")
    assert "extract_precomp" in attrs["command"]


def test_float16_and_chunked_streaming(tmp_path, text_encoder):
    data = make_precomp(tmp_path / "d", splits=(("dev", 3),), seed=3)
    out = extract_precomp(tmp_path / "d", tmp_path / "c16.h5", text_model=text_encoder, relevance="none",
                          progress=False, chunk_bytes=1)              # one image per chunk
    s = FeatureStore(out).split("dev")
    assert s.regions(slice(None)).dtype == np.float16
    np.testing.assert_array_equal(s.regions(slice(None)), data["dev"][0].astype(np.float16))
    assert s.relevance() is None and s.pooled().dtype == np.float16


def test_global_vectors_and_relevance_file(tmp_path, text_encoder):
    root = tmp_path / "vgg"
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((3, 16)).astype(np.float32)
    np.save(root.mkdir() or root / "test_ims.npy", vecs)
    caps = [f"caption number {i}" for i in range(15)]
    (root / "test_caps.txt").write_text("\n".join(caps))           # no trailing newline
    rel = rng.random((15, 3)).astype(np.float32)
    rel.tofile(tmp_path / "teran-test-rougeL.npy")                   # headerless TERAN file
    out = extract_precomp(root, tmp_path / "v.h5", text_model=text_encoder, progress=False,
                          relevance=tmp_path / "teran-test-rougeL.npy")
    s = FeatureStore(out).split("test")
    np.testing.assert_array_equal(s.global_features(), vecs.astype(np.float16))
    np.testing.assert_array_equal(s.relevance(), rel)
    assert s.image_ids() == ["0", "1", "2"]


def test_relevance_per_split_spec(tmp_path, text_encoder):
    data = make_precomp(tmp_path / "p", splits=(("train", 2), ("dev", 2), ("test", 2)))
    rel = np.random.default_rng(0).random((10, 2))
    np.save(tmp_path / "r.npy", rel)                                  # RVLR-style ordinary .npy
    out = extract_precomp(tmp_path / "p", tmp_path / "o.h5", text_model=text_encoder, progress=False,
                          relevance=f"test={tmp_path / 'r.npy'},dev=none,train=compute")
    store = FeatureStore(out)
    np.testing.assert_array_equal(store.split("test").relevance(), rel.astype(np.float32))
    assert store.split("dev").relevance() is None
    np.testing.assert_array_equal(store.split("train").relevance(), rouge_l(data["train"][1]))
    with pytest.raises(ConfigError, match="SPLIT=FILE"):
        extract_precomp(tmp_path / "p", tmp_path / "o2.h5", text_model=text_encoder, relevance=tmp_path / "r.npy")


def test_plain_bert_folder_gets_mean_pooling(tmp_path, text_encoder):
    from featvlr.extract.text_encoder import TextEncoder

    folder = tmp_path / "bert"
    text_encoder.model[0].auto_model.save_pretrained(folder)
    text_encoder.model.tokenizer.save_pretrained(folder)
    enc = TextEncoder(folder, device="cpu")
    assert enc.name == "bert" and enc.dim == 384 and enc.has_tokens
    tokens, offsets, pooled = enc.encode(["a dog runs on the grass", "two cats"])
    for i in range(2):
        np.testing.assert_allclose(pooled[i], tokens[offsets[i]:offsets[i + 1]].mean(0), atol=1e-5)


# -- atomicity -----------------------------------------------------------------------------

def test_crash_mid_write_leaves_nothing(tmp_path, text_encoder, monkeypatch):
    import featvlr.extract.precomp as precomp

    make_precomp(tmp_path / "p")

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash after the regions were written")

    monkeypatch.setattr(precomp, "_write_texts", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_precomp(tmp_path / "p", tmp_path / "out" / "c.h5", text_model=text_encoder, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


# -- bad input: library raises InputError, CLI prints one line and exits 2 -----------------

def _corrupt(root, case):
    """Damage a good precomp folder; returns the file the message must name."""
    if case == "missing_caps":
        (root / "test_caps.txt").unlink()
        return root / "test_caps.txt"
    if case == "caption_count":
        caps = (root / "test_caps.txt").read_text().splitlines()
        (root / "test_caps.txt").write_text("\n".join(caps[:-1]) + "\n")
        return root / "test_caps.txt"
    if case == "rank":
        np.save(root / "test_ims.npy", np.zeros((6, 4, 8, 1), np.float32))
        return root / "test_ims.npy"
    if case == "dtype":
        np.save(root / "test_ims.npy", np.zeros((6, 4, 8), np.int32))
        return root / "test_ims.npy"
    if case == "nan_last_chunk":
        ims = np.load(root / "test_ims.npy")
        ims[5, 3, 7] = np.inf
        np.save(root / "test_ims.npy", ims)
        return root / "test_ims.npy"
    if case == "empty_caption":
        caps = (root / "test_caps.txt").read_text().splitlines()
        caps[6] = "   "
        (root / "test_caps.txt").write_text("\n".join(caps) + "\n")
        return root / "test_caps.txt"
    if case == "not_utf8":
        data = (root / "test_caps.txt").read_bytes().split(b"\n")
        data[3] = b"caf\xe9 au lait"
        (root / "test_caps.txt").write_bytes(b"\n".join(data))
        return root / "test_caps.txt"
    if case == "not_npy":
        (root / "test_ims.npy").write_bytes(b"\x93NUMPY garbage")
        return root / "test_ims.npy"
    if case == "text_renamed":  # a text file given the .npy name
        (root / "test_ims.npy").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
        return root / "test_ims.npy"
    if case == "pickled":
        np.save(root / "test_ims.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return root / "test_ims.npy"
    if case == "ids_count":
        (root / "test_ids.txt").write_text("a\nb\n")
        return root / "test_ids.txt"
    raise AssertionError(case)


CASES = {
    "missing_caps": "no such file",
    "caption_count": "29 captions for the 6 images",
    "rank": "rank 4",
    "dtype": "floating point",
    "nan_last_chunk": "image row 5 contains NaN or inf",
    "empty_caption": "line 7 is an empty caption",
    "not_utf8": "line 4 is not valid UTF-8",
    "not_npy": "not a readable .npy",
    "ids_count": "2 ids for the 6 images",
    "text_renamed": "not a numpy array file: it does not start with the .npy header",
    "pickled": "not a numpy array file of numbers: it holds Python objects",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(tmp_path, case, text_encoder, cli):
    root = tmp_path / "p"
    make_precomp(root, splits=(("test", 6),))
    named = _corrupt(root, case)
    out = tmp_path / "out" / "c.h5"
    with pytest.raises(InputError, match=CASES[case]) as info:
        extract_precomp(root, out, text_model=text_encoder, progress=False, chunk_bytes=4 * 8 * 4)
    assert info.value.path == str(named)
    code, stdout, err = cli("extract", "precomp", "--root", root, "--out", out, "--no-progress")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"featvlr: error: {named}: ") and CASES[case] in lines[0]
    assert not out.exists() and not out.with_name("c.h5.partial").exists()


def test_missing_root_and_split(tmp_path, cli):
    code, _, err = cli("extract", "precomp", "--root", tmp_path / "nope", "--out", tmp_path / "c.h5")
    assert code == 2 and "nope: no such folder" in err
    make_precomp(tmp_path / "p", splits=(("test", 2),))
    code, _, err = cli("extract", "precomp", "--root", tmp_path / "p", "--splits", "dev", "--out", tmp_path / "c.h5")
    assert code == 2 and "dev_ims.npy: no such file" in err and "test" in err
    assert not (tmp_path / "c.h5").exists()


def test_existing_cache_refused_unless_overwrite(extracted, tmp_path, cli):
    root, _, out = extracted
    before = out.read_bytes()
    code, _, err = cli("extract", "precomp", "--root", root, "--out", out)
    assert code == 2 and "exists already" in err and "--overwrite" in err
    assert out.read_bytes() == before


def test_model_folder_that_is_not_a_model(tmp_path, cli):
    make_precomp(tmp_path / "p", splits=(("test", 2),))
    bogus = tmp_path / "model"
    bogus.mkdir()
    (bogus / "weights.txt").write_text("x")
    code, _, err = cli("extract", "precomp", "--root", tmp_path / "p", "--out", tmp_path / "c.h5",
                       "--text-model", bogus)
    assert code == 2 and f"{bogus}: not a model folder" in err
    (bogus / "config.json").write_text("{}")                          # config without a model type
    from featvlr.extract.text_encoder import TextEncoder

    with pytest.raises(InputError, match="cannot load the model") as info:
        TextEncoder(bogus, device="cpu")
    assert info.value.path == str(bogus)
    assert not (tmp_path / "c.h5").exists()


def test_cli_extracts_with_the_default_model(tmp_path, cli):
    make_precomp(tmp_path / "f30k_precomp", splits=(("test", 2),))
    code, out, err = cli("extract", "precomp", "--root", tmp_path / "f30k_precomp", "--out", tmp_path / "c.h5",
                         "--no-progress", "--batch-size", "4", "--device", "cpu")
    assert code == 0, err
    assert "wrote" in out
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f.attrs["command"].startswith("featvlr ")
        assert f["texts/test/tokens"].dtype == np.float16 and f["relevance/test/rougeL"].shape == (10, 2)


def test_cli_subprocess_bad_input(tmp_path, cli_process):
    """The entry point as a user runs it: one line on stderr, exit status 2, nothing written."""
    root = tmp_path / "p"
    make_precomp(root, splits=(("test", 2),))
    named = _corrupt(root, "caption_count")
    out = tmp_path / "c.h5"
    proc = cli_process("extract", "precomp", "--root", root, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr == f"featvlr: error: {named}: has 9 captions for the 2 images of test_ims.npy; " \
                          "expected exactly 5 per image (10)\n"
    assert not out.exists() and not out.with_name("c.h5.partial").exists()
