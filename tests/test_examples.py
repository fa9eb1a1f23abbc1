"""`featvlr eval RUN --examples N`: the examples page, its seeded queries and the ground
truth's rank, which is the evaluation's."""
from __future__ import annotations

import json

import numpy as np
import torch
from test_inference import _direct_model, vse_run  # noqa: F401  (the fixture)
from test_mlcl import make_method, write_composed_cache

from featvlr.evaluation.methods import save_query_ranks
from featvlr.evaluation.options import EvalOptions
from featvlr.inference.examples import example_queries, write_examples


def test_ranks_on_the_page_are_the_evaluations(vse_run, tmp_path):  # noqa: F811
    import featvlr

    model = featvlr.load(vse_run[0], device="cpu")
    split = model.split("test")
    saved = np.load(save_query_ranks(model.method, split, EvalOptions(), "cpu", tmp_path / "r.npz"))
    sections = {s["scenario"]: s for s in example_queries(model, "test", 4, seed=3)}
    assert list(sections) == ["t2i", "i2t", "i2i", "t2t", "i2it", "t2it"]  # every scenario the run evaluates
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



def test_uni_modal_and_mixed_sections_show_the_relevance_grade(vse_run):  # noqa: F811
    import featvlr

    model = featvlr.load(vse_run[0], device="cpu")
    split = model.split("test")
    R = np.asarray(split.relevance("rougeL"))  # [n_texts, n_images]
    txt2img = split.image_index()
    first = {int(i): t for t, i in reversed(list(enumerate(txt2img.tolist())))}
    sections = {s["scenario"]: s for s in example_queries(model, "test", 3, seed=1)}
    for scenario in ("i2i", "t2t", "i2it", "t2it"):
        items = sections[scenario]["items"]
        assert len(items) == 3
        for item in items:
            assert len(item["hits"]) == 5
            asked = item["query"]
            image = asked["image_row"] if "image_row" in asked else int(txt2img[asked["text_row"]])
            for hit in item["hits"]:
                if hit["kind"] == "image":  # an image's grade: the query image's first caption against it
                    assert hit["grade"] == np.float32(R[first[image], hit["row"]])
                else:  # a caption's grade: that caption against the query image
                    assert hit["grade"] == np.float32(R[hit["row"], image])
            assert item["best"] == sorted(item["best"], reverse=True) and len(item["best"]) == 5
            query = ("image", item["query"]["image_row"]) if "image_row" in item["query"] else \
                ("text", item["query"]["text_row"])
            assert query not in [(h["kind"], h["row"]) for h in item["hits"]]  # the query leaves its gallery
        kinds = {h["kind"] for item in items for h in item["hits"]}
        assert kinds <= {"image", "text"} and (scenario in ("i2it", "t2it") or len(kinds) == 1)


def test_eval_examples_writes_the_page(vse_run, cli, tmp_path):  # noqa: F811
    run, cache = vse_run
    code, out, err = cli("eval", run, "--split", "test", "--examples", "3", "--json", tmp_path / "t.json",
                         "--no-plots", "--device", "cpu")
    assert code == 0, err
    page = tmp_path / "test_examples.html"  # the split in the name: another split's page does not replace it
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["examples"] == str(page) and f"examples: {page}" in out
    text = page.read_text()
    assert text.count("class='row'") == 6 * 3 and "Text to image" in text and "Image to text" in text
    for title in ("Image to image", "Text to text", "Image to images and texts", "Text to texts and images"):
        assert title in text
    assert "ground truth rank" in text and "relevance" in text and "<script" not in text
    code, out, err = cli("eval", run, "--split", "dev", "--examples", "2", "--json", tmp_path / "d.json",
                         "--no-plots", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "dev_examples.html").exists() and page.read_text() == text
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


def test_composed_page_without_ground_truth_shows_the_modifier_and_the_reference_description(tmp_path):
    """CIRR test1: no targets. The page says why there is no rank, shows the modifier, and
    describes each image from the source's scene file when there is one (the demo's)."""
    import h5py

    from featvlr.config import load_config

    cache = write_composed_cache(tmp_path / "toy.h5")
    root = tmp_path / "demo_data"
    (root / "truth").mkdir(parents=True)
    with h5py.File(cache, "a") as f:
        f.attrs["sources"] = json.dumps({"layout": "cirr", "root": str(root / "cirr")})
        ids = [s.decode() for s in f["images/test1/ids"][:]]
        n_text = f["texts/test1/pooled"].shape[0]
        f.create_dataset("texts/test1/raw", data=[f"make it number {i}".encode() for i in range(n_text)])
    scenes = {name: {"scene": "kitchen", "objects": [{"category": "cup", "colour": "red", "size": "small"}],
                     "relations": []} for name in ids}
    (root / "truth" / "cirr_scenes.json").write_text(json.dumps(scenes))
    cfg = load_config(None, ["method=combiner", f"data.cache={cache}", "data.dataset=cirr",
                             "model.projection_dim=32", "model.hidden_dim=48"])
    model = _direct_model(make_method("combiner", cache), cfg, cache, tmp_path)
    text = write_examples(model, tmp_path / "test1_examples.html", split="test1", n=2).read_text()
    assert text.count("class='row'") == 2
    assert "make it number" in text
    assert "kitchen: a small red cup" in text
    assert "no ground truth in this split (test1)" in text and "no ground truth for this query" not in text


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


def test_eval_help_names_the_page_and_what_each_scenario_shows(cli):
    code, out, _ = cli("eval", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "<split>_examples.html" in text and "write examples.html" not in text
    assert "ground truth's rank (i2t, t2i, composed)" in text
    assert "relevance grade" in text and "(i2i, t2t, i2it, t2it)" in text
