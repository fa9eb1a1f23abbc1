"""`featvlr eval RUN --examples N`: the examples page, its seeded queries and the ground
truth's rank, which is the evaluation's."""
from __future__ import annotations

import json

import numpy as np
import torch

from featvlr.evaluation.examples import example_queries, write_examples
from featvlr.evaluation.methods import save_query_ranks
from featvlr.evaluation.options import EvalOptions

from test_inference import _direct_model, vse_run  # noqa: F401  (the fixture)
from test_mlcl import make_method, write_composed_cache


def test_ranks_on_the_page_are_the_evaluations(vse_run, tmp_path):  # noqa: F811
    import featvlr

    model = featvlr.load(vse_run[0], device="cpu")
    split = model.split("test")
    saved = np.load(save_query_ranks(model.method, split, EvalOptions(), "cpu", tmp_path / "r.npz"))
    sections = {s["scenario"]: s for s in example_queries(model, "test", 4, seed=3)}
    assert set(sections) == {"t2i", "i2t"}
    for scenario, key in (("t2i", "text_row"), ("i2t", "image_row")):
        items = sections[scenario]["items"]
        assert len(items) == 4
        for item in items:
            row = item["query"][key]
            assert item["rank"] == saved[scenario][row] + 1
            assert len(item["hits"]) == 5
            in_top = [n + 1 for n, h in enumerate(item["hits"]) if h["truth"]]
            assert (in_top[0] == item["rank"]) if item["rank"] <= 5 else not in_top
    again = {s["scenario"]: s for s in example_queries(model, "test", 4, seed=3)}
    assert again["t2i"]["items"] == sections["t2i"]["items"]  # seeded


def test_eval_examples_writes_the_page(vse_run, cli, tmp_path):  # noqa: F811
    run, cache = vse_run
    code, out, err = cli("eval", run, "--split", "test", "--examples", "3", "--json", tmp_path / "t.json",
                         "--no-plots", "--device", "cpu")
    assert code == 0, err
    page = tmp_path / "examples.html"
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["examples"] == str(page) and f"examples: {page}" in out
    text = page.read_text()
    assert text.count("class='row'") == 6 and "Text to image" in text and "Image to text" in text
    assert "ground truth rank" in text and "<script" not in text
    code, _, err = cli("eval", "--embeddings", tmp_path / "x.npz", "--examples", "2")
    assert code == 2 and "--examples needs a run" in err


def test_composed_page_marks_the_target(tmp_path):
    cache = write_composed_cache(tmp_path / "toy.h5")
    from featvlr.config import load_config

    cfg = load_config(None, ["method=combiner", f"data.cache={cache}", "data.dataset=cirr",
                             "model.projection_dim=32", "model.hidden_dim=48"])
    model = _direct_model(make_method("combiner", cache), cfg, cache, tmp_path)
    (section,) = example_queries(model, "val", 5, seed=0)
    split = model.split("val")
    comp = split.composed()
    for item in section["items"]:
        assert item["truth"] and item["rank"] >= 1
        assert item["query"]["reference"] not in [h["row"] for h in item["hits"]]  # CIRR removes it
        scores = torch.tensor([h["score"] for h in item["hits"]])
        assert torch.all(scores[:-1] >= scores[1:])
    assert {item["truth"][0] for item in section["items"]} <= set(comp["target"].tolist())
    page = write_examples(model, tmp_path / "examples.html", split="val", n=2)
    assert page.read_text().count("class='row'") == 2


def test_thumbnails_where_the_cache_records_an_image_folder(tmp_path):
    import h5py
    from PIL import Image

    from featvlr.config import load_config

    cache = write_composed_cache(tmp_path / "toy.h5")
    folder = tmp_path / "images"
    folder.mkdir()
    with h5py.File(cache, "a") as f:
        f.attrs["sources"] = json.dumps({"images_dir": str(folder)})
        ids = [s.decode() for s in f["images/val/ids"][:]]
    for n, name in enumerate(ids):
        Image.new("RGB", (32, 24), (40 * (n % 6), 120, 200 - 30 * (n % 6))).save(folder / f"{name}.png")
    cfg = load_config(None, ["method=combiner", f"data.cache={cache}", "data.dataset=cirr",
                             "model.projection_dim=32", "model.hidden_dim=48"])
    model = _direct_model(make_method("combiner", cache), cfg, cache, tmp_path)
    out = tmp_path / "run" / "eval" / "examples.html"
    out.parent.mkdir(parents=True)
    text = write_examples(model, out, split="val", n=2).read_text()
    assert text.count("<img src='../../images/") == 2 * 6  # reference + top 5 per query, relative paths
