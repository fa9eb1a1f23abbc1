"""`featvlr search` and `featvlr embed` through the command line: the JSON record's keys, the
embeddings file that `featvlr eval --embeddings` reads, bad input as one line and exit 2."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from test_inference import vse_run  # noqa: F401  (the fixture)

RECORD_KEYS = {"run", "checkpoint", "method", "cache", "split", "k", "backend", "query", "results"}
IMAGE_HIT = {"rank", "row", "image_id", "score", "captions"}
TEXT_HIT = {"rank", "row", "text", "image_id", "image_row", "score"}


def test_text_search_json_is_stable(vse_run, cli):  # noqa: F811
    run, _ = vse_run
    code, out, err = cli("search", run, "a red bird near a boat", "--k", "3", "--json", "--device", "cpu")
    assert code == 0, err
    rec = json.loads(out)
    assert set(rec) == RECORD_KEYS and rec["k"] == 3 and rec["backend"] == "exact" and rec["method"] == "vse"
    assert rec["query"] == {"type": "text", "text": "a red bird near a boat"}
    hits = rec["results"]["t2i"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(set(h) == IMAGE_HIT for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"] and len(hits[0]["captions"]) == 5


def test_image_search_lists_texts_and_images(vse_run, cli):  # noqa: F811
    run, _ = vse_run
    code, out, err = cli("search", run, "--image", "test3", "--k", "4", "--json", "--device", "cpu")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["query"] == {"type": "image", "image_id": "test3", "row": 3}
    assert set(rec["results"]) == {"i2t", "i2i"}
    assert all(set(h) == TEXT_HIT for h in rec["results"]["i2t"])
    assert "test3" not in [h["image_id"] for h in rec["results"]["i2i"]]  # the query itself is left out
    code, out, err = cli("search", run, "--image", "test3", "--k", "2", "--device", "cpu")
    assert code == 0 and out.splitlines()[1] == "i2t:" and "i2i:" in out


def test_faiss_backend_lists_what_exact_lists(vse_run, cli):  # noqa: F811
    pytest.importorskip("faiss")
    run, _ = vse_run
    a = cli("search", run, "two cats on a sofa", "--k", "5", "--json", "--device", "cpu")
    b = cli("search", run, "two cats on a sofa", "--k", "5", "--json", "--device", "cpu", "--backend", "faiss-flat")
    assert a[0] == 0 and b[0] == 0, a[2] + b[2]
    rows = lambda out: [h["row"] for h in json.loads(out)["results"]["t2i"]]  # noqa: E731
    assert rows(a[1]) == rows(b[1])
    assert list((run / "index").glob("test-images-flat-*.faiss"))


def test_embed_file_is_what_eval_reads(vse_run, cli, tmp_path):  # noqa: F811
    run, cache = vse_run
    out = tmp_path / "emb.npz"
    code, stdout, err = cli("embed", run, "--split", "test", "--out", out, "--device", "cpu")
    assert code == 0, err
    with np.load(out) as z:
        assert {"images", "texts", "image_ids", "captions", "txt2img"} <= set(z.files)
        assert z["images"].shape[0] == 10 and z["texts"].shape[0] == 50 and z["image_ids"][0] == "test0"
    code, _, err = cli("eval", "--embeddings", out, "--cache", cache, "--split", "test", "--json",
                       tmp_path / "e.json", "--no-plots", "--scenarios", "i2t,t2i", "--device", "cpu")
    assert code == 0, err
    code, _, err = cli("eval", run, "--split", "test", "--json", tmp_path / "r.json", "--no-plots",
                       "--scenarios", "i2t,t2i", "--device", "cpu")
    assert code == 0, err
    got = json.loads((tmp_path / "e.json").read_text())["metrics"]
    want = json.loads((tmp_path / "r.json").read_text())["metrics"]
    for key in ("i2t/R@1", "i2t/R@5", "t2i/R@1", "t2i/R@10", "rsum"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def _one_line_error(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvlr: error:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], err


def test_bad_input_is_one_line_and_exit_2(vse_run, cli, tmp_path):  # noqa: F811
    run, cache = vse_run
    _one_line_error(*cli("search", run, "--image", "no-such-image", "--device", "cpu")[::2], "unknown image id")
    _one_line_error(*cli("search", run, "--device", "cpu")[::2], "give one query")
    _one_line_error(*cli("search", run, "x", "--reference", "test1", "--modifier", "m", "--device", "cpu")[::2],
                    "give one query")
    _one_line_error(*cli("search", run, "--reference", "test1", "--modifier", "m", "--device", "cpu")[::2],
                    "cross-modal")
    _one_line_error(*cli("search", run, "x", "--split", "nope", "--device", "cpu")[::2], "no split 'nope'")
    _one_line_error(*cli("search", tmp_path / "missing_run", "x")[::2], "no such run folder")
    # a cache whose text encoder folder is gone
    moved = tmp_path / "moved.h5"
    shutil.copy(cache, moved)
    with h5py.File(moved, "a") as f:
        sources = json.loads(f.attrs["sources"])
        sources["text_model"] = str(tmp_path / "gone" / "my-encoder")
        f.attrs["sources"] = json.dumps(sources)
        f.attrs["text_encoder"] = "my-encoder"
    _one_line_error(*cli("search", run, "a dog", "--cache", moved, "--device", "cpu")[::2],
                    "text encoder folder", "missing")
