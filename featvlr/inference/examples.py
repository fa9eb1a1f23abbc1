"""The examples page of a run (``featvlr eval RUN --examples N``): ``examples.html`` beside the
results JSON, with N seeded queries per scenario and what the run retrieves for them.

Scenarios: ``t2i`` (caption -> images) and ``i2t`` (image -> captions) for cross-modal
runs, then the uni-modal and mixed ones the run evaluates (``i2i``, ``t2t``, ``i2it``,
``t2it``: an image or its first caption against images, captions or both, the query left
out of its gallery, as the evaluation does), ``composed`` (reference + modifier -> images)
for composed runs. Each query shows its top 5 (the ranking of
:func:`featvlr.inference.rank_queries`, the evaluation's). Cross-modal and composed queries
mark the ground truth and give its rank by the evaluation's rule
(:func:`featvlr.retrieval.ranks`: 1-based here, ties pessimistic; a ground truth outside a
GLS shortlist is a miss); uni-modal and mixed ones give each hit's relevance grade (the
split's ROUGE-L relevance, the NDCG gain) next to the best 5 grades the gallery holds.
Images are thumbnails when the cache records their folder (``sources["images_dir"]``), else
their id and captions (for a composed split, whose images have none, the scene the demo
generated, when the source folder has its ``truth/*_scenes.json``). The queries are drawn
with ``numpy.random.default_rng(seed)``, so the same run and seed show the same queries. The
page is one self-contained HTML file.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.core.fileio import atomic_write_text
from featvlr.retrieval import EmbeddingScores, group_positives, ranks

TOP = 5
UNI_TITLES = {"i2i": "Image to image", "t2t": "Text to text", "i2it": "Image to images and texts",
              "t2it": "Text to texts and images"}


def _take(out: Any, rows: torch.Tensor) -> Any:
    if isinstance(out, dict):
        return {k: v.index_select(0, rows.to(v.device)) for k, v in out.items()}
    return out.index_select(0, rows.to(out.device))


def _draw(n: int, count: int, seed: int, allowed: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(n) if allowed is None else np.asarray(allowed)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)) if len(pool) else pool


def example_queries(model: Any, split: str, n: int, seed: int = 0, scenarios: list[str] | None = None
                    ) -> list[dict[str, Any]]:
    """Per scenario (``scenarios``: those of the evaluation, None for every one the task has):
    the drawn queries, their top :data:`TOP` and the ground truth's rank (uni-modal and mixed:
    each hit's relevance ``grade`` and the gallery's ``best`` grades).

    Returns ``[{"scenario", "title", "items": [{"query": {...}, "hits": [{"row", "score",
    "truth"}], "truth": [rows], "rank": 1-based or None, "n_gallery"}]}]``.
    """
    from featvlr.inference.records import composed_exclusion, rank_queries
    from featvlr.inference.search import cross_source

    sp = model.split(split)
    idx = model.index(sp.name)
    out = []
    if model.task == "composed":
        from featvlr.data.composed import read_queries
        from featvlr.evaluation.embed import embed_composed_split

        q = read_queries(sp)
        has_target = np.nonzero(q.target >= 0)[0]
        rows = _draw(q.n, n, seed, has_target if len(has_target) else None)
        queries, _ = embed_composed_split(model.method, sp, device=model.device, queries=q)
        qr = torch.as_tensor(rows)
        queries = queries.index_select(0, qr.to(queries.device))
        ref = torch.as_tensor(q.reference[rows]) if composed_exclusion(model, sp) else None
        scores, top = rank_queries(model, "composed", split=sp.name, k=TOP, queries=queries, exclude=ref)
        tgt = torch.as_tensor(q.target[rows])
        rk = ranks(EmbeddingScores(queries, idx.images), tgt.clamp(min=-1), exclude=ref) if len(rows) else tgt
        texts = sp.raw_captions() if sp.has(f"texts/{sp.name}/raw") else []
        items = []
        for i, r in enumerate(rows.tolist()):
            t = int(q.target[r])
            modifier = texts[int(q.text[r, 0])] if texts else ""
            item = {"query": {"reference": int(q.reference[r]), "text": modifier},
                    "hits": _hits(scores[i], top[i], {t}), "truth": [t] if t >= 0 else [],
                    "rank": _rank(int(rk[i]), sp.n_images), "n_gallery": sp.n_images}
            if not len(has_target):
                item["note"] = (f"no ground truth in this split ({sp.name}): its targets are scored by the test "
                                "server (featvlr eval --split writes the submission files)")
            items.append(item)
        out.append({"scenario": "composed", "title": "Composed: reference image + modifier text -> target image",
                    "items": items})
        return out
    txt2img = sp.image_index()
    t_rows = _draw(sp.n_texts, n, seed, np.nonzero(txt2img >= 0)[0])
    scores, top = rank_queries(model, "t2i", split=sp.name, k=TOP, rows=t_rows)
    q_txt = _take(idx.texts, torch.as_tensor(t_rows))
    rk = ranks(cross_source(model.method, idx.images, q_txt, "texts"), torch.as_tensor(txt2img[t_rows]))
    out.append({"scenario": "t2i", "title": "Text to image", "items": [
        {"query": {"text_row": int(r)}, "hits": _hits(scores[i], top[i], {int(txt2img[r])}),
         "truth": [int(txt2img[r])], "rank": _rank(int(rk[i]), sp.n_images), "n_gallery": sp.n_images}
        for i, r in enumerate(t_rows.tolist())]})
    i_rows = _draw(sp.n_images, n, seed + 1)
    scores, top = rank_queries(model, "i2t", split=sp.name, k=TOP, rows=i_rows)
    q_img = _take(idx.images, torch.as_tensor(i_rows))
    groups = group_positives(torch.as_tensor(txt2img), sp.n_images)[torch.as_tensor(i_rows)]
    rk = ranks(cross_source(model.method, q_img, idx.texts, "images"), groups)
    items = []
    for i, r in enumerate(i_rows.tolist()):
        truth = [int(c) for c in groups[i].tolist() if c >= 0]
        items.append({"query": {"image_row": int(r)}, "hits": _hits(scores[i], top[i], set(truth)), "truth": truth,
                      "rank": _rank(int(rk[i]), sp.n_texts), "n_gallery": sp.n_texts})
    out.append({"scenario": "i2t", "title": "Image to text", "items": items})
    out = [sec for sec in out if scenarios is None or sec["scenario"] in scenarios]
    return out + _uni_and_mixed(model, sp, idx, n, seed + 2, scenarios)


def _uni_and_mixed(model: Any, sp: Any, idx: Any, n: int, seed: int, scenarios: list[str] | None
                   ) -> list[dict[str, Any]]:
    """The i2i, t2t, i2it and t2it sections the run evaluates: ``n`` images drawn among those
    with a caption, each (or its first caption) against images, captions or both, with each
    hit's relevance grade and the best grades of the gallery."""
    from featvlr.evaluation.split_data import first_captions
    from featvlr.inference.search import global_embeddings

    wanted = [s for s in UNI_TITLES if scenarios is None or s in scenarios]
    relevance = sp.relevance("rougeL") if wanted else None
    emb = global_embeddings(model.method, idx.images, idx.texts) if relevance is not None else None
    if emb is None:  # no relevance in the split, or a method that scores pairs only: not evaluated either
        return []
    img, txt = (e.float().cpu() for e in emb)
    R = torch.as_tensor(relevance)  # [n_texts, n_images]
    first = first_captions(sp.image_index(), sp.n_images)
    rows = _draw(sp.n_images, n, seed, np.nonzero(first >= 0)[0])
    out = []
    for scenario in wanted:
        items = []
        for a in rows.tolist():
            c = int(first[a])
            by_image = scenario in ("i2i", "i2it")
            q = img[a] if by_image else txt[c]
            parts = {"i2i": ("image",), "t2t": ("text",), "i2it": ("image", "text"), "t2it": ("text", "image")}
            kinds, scores, grades, rows_of = [], [], [], []
            for kind in parts[scenario]:
                gallery = img if kind == "image" else txt
                sc = gallery @ q
                if kind == "image" and by_image:
                    sc[a] = float("-inf")  # the query leaves its own gallery
                if kind == "text" and not by_image:
                    sc[c] = float("-inf")
                kinds += [kind] * len(sc)
                rows_of.append(torch.arange(len(sc)))
                scores.append(sc)
                grades.append(R[c] if kind == "image" else R[:, a])
            sc, gr, rw = torch.cat(scores), torch.cat(grades), torch.cat(rows_of)
            valid = torch.isfinite(sc)
            top = torch.topk(sc, min(TOP, int(valid.sum()))).indices
            best = torch.sort(gr[valid], descending=True).values[:TOP]
            items.append({"query": {"image_row": a} if by_image else {"text_row": c},
                          "hits": [{"kind": kinds[int(j)], "row": int(rw[j]), "score": float(sc[j]),
                                    "grade": float(gr[j]), "truth": False} for j in top.tolist()],
                          "best": [float(g) for g in best.tolist()], "truth": [], "rank": None,
                          "n_gallery": int(valid.sum())})
        out.append({"scenario": scenario, "title": UNI_TITLES[scenario], "items": items})
    return out


def _hits(scores: torch.Tensor, rows: torch.Tensor, truth: set[int]) -> list[dict[str, Any]]:
    return [{"row": int(r), "score": float(s), "truth": int(r) in truth}
            for s, r in zip(scores.tolist(), rows.tolist()) if r >= 0]


def _rank(rank0: int, n_gallery: int) -> int | None:
    """1-based rank; None when the query has no ground truth or it was not retrieved."""
    return None if rank0 < 0 or rank0 >= n_gallery else rank0 + 1


def write_examples(model: Any, path: str | Path, *, split: str = "test", n: int = 8, seed: int = 0,
                   scenarios: list[str] | None = None) -> Path:
    """Write the examples page of ``model`` (a :class:`~featvlr.inference.RetrievalModel`) on
    ``split`` to ``path`` (``examples.html``); see the module docstring."""
    path = Path(path)
    sp = model.split(split)
    sections = example_queries(model, sp.name, n, seed, scenarios)
    page = _Page(model, sp, path.parent)
    body = [f"<h1>{_e(model.method.name)} on {_e(sp.name)}: retrieval examples</h1>",
            f"<p class='meta'>run {_e(model.run_dir)} &middot; checkpoint {_e(model.checkpoint.name)} &middot; cache "
            f"{_e(model.cache)} &middot; {n} queries per scenario drawn with seed {seed} &middot; top {TOP}; "
            "<span class='gt'>green</span>: ground truth; its rank is the evaluation's (1-based, ties "
            "against it).</p>"]
    for sec in sections:
        body.append(f"<h2>{_e(sec['title'])} <small>({_e(sec['scenario'])})</small></h2>")
        for item in sec["items"]:
            body.append(page.row(sec["scenario"], item))
    atomic_write_text(path, _HTML.format(title=_e(f"{model.method.name} examples"), body="\n".join(body)))
    return path


class _Page:
    def __init__(self, model: Any, split: Any, folder: Path):
        self.split = split
        self.ids = split.image_ids()
        self.texts = split.raw_captions() if split.has(f"texts/{split.name}/raw") else []
        self.txt2img = split.image_index()
        self.caps: dict[int, list[str]] = {}
        for t, i in enumerate(self.txt2img.tolist()):  # composed splits map modifiers to references: no captions
            if i >= 0 and self.texts and model.task != "composed":
                self.caps.setdefault(i, []).append(self.texts[t])
        self.scenes = _scene_descriptions(model.cache) if model.task == "composed" else {}
        files = model.image_files(split.name)
        self.files = [None if f is None else _relative(f, folder) for f in files] if files else None

    def image(self, row: int, *, truth: bool = False, score: float | None = None, label: str = "",
              shade: float | None = None) -> str:
        inner = f"<div class='id'>{_e(self.ids[row])}</div>"
        if self.files and self.files[row]:
            inner = f"<img src='{_e(self.files[row])}' alt='{_e(self.ids[row])}' loading='lazy'>" + inner
        elif self.caps.get(row):
            inner += "<ul>" + "".join(f"<li>{_e(c)}</li>" for c in self.caps[row][:3]) + "</ul>"
        elif self.scenes.get(self.ids[row]):
            inner += f"<div class='txt scene'>{_e(self.scenes[self.ids[row]])}</div>"
        return self._card(inner, truth, score, label, shade)

    def text(self, row: int, *, truth: bool = False, score: float | None = None, label: str = "",
             shade: float | None = None) -> str:
        img = int(self.txt2img[row]) if row < len(self.txt2img) else -1
        inner = f"<div class='txt'>{_e(self.texts[row] if self.texts else row)}</div>"
        if img >= 0:
            inner += f"<div class='id'>image {_e(self.ids[img])}</div>"
        return self._card(inner, truth, score, label, shade)

    @staticmethod
    def _card(inner: str, truth: bool, score: float | None, label: str, shade: float | None = None) -> str:
        head = label or (f"{score:+.3f}" if score is not None else "")
        cls = "card gt" if truth else "card"
        style = ""
        if shade is not None:  # a relevance grade: the greener, the more relevant
            g = min(1.0, max(0.0, float(shade)))
            style = (f" style='border-color: rgba(46,157,75,{0.15 + 0.85 * g:.2f}); "
                     f"background: rgba(46,157,75,{0.25 * g:.2f})'")
        return (f"<div class='{cls}'{style}><div class='head'>{_e(head)}{' &#10003;' if truth else ''}</div>"
                f"{inner}</div>")

    def graded_row(self, item: dict[str, Any]) -> str:
        """A uni-modal or mixed query: its top hits with their relevance grade."""
        q = item["query"]
        query = self.image(q["image_row"], label="query") if "image_row" in q else self.text(q["text_row"],
                                                                                           label="query")
        hits = []
        for n, h in enumerate(item["hits"]):
            show = self.image if h["kind"] == "image" else self.text
            hits.append(show(h["row"], label=f"#{n + 1}  {h['score']:+.3f}  rel {h['grade']:.2f}",
                             shade=h["grade"]))
        got = " ".join(f"{h['grade']:.2f}" for h in item["hits"])
        best = " ".join(f"{g:.2f}" for g in item["best"])
        note = (f"relevance (ROUGE-L, the NDCG gain) of the top {len(item['hits'])}: {got}; the best "
                f"{len(item['best'])} of the {item['n_gallery']} in the gallery: {best}")
        return (f"<div class='row'><div class='q'>{query}</div><div class='hits'>{''.join(hits)}</div>"
                f"<div class='note'>{_e(note)}</div></div>")

    def row(self, scenario: str, item: dict[str, Any]) -> str:
        if scenario in UNI_TITLES:
            return self.graded_row(item)
        q = item["query"]
        if scenario == "t2i":
            query = self.text(q["text_row"], label="query")
        elif scenario == "i2t":
            query = self.image(q["image_row"], label="query")
        else:
            modifier = _e(q["text"] or "(no raw text in the cache)")
            query = self.image(q["reference"], label="reference") + \
                f"<div class='card mod'><div class='head'>modifier</div><div class='txt'>{modifier}</div></div>"
        show = self.text if scenario == "i2t" else self.image
        hits = [show(h["row"], truth=h["truth"], score=h["score"], label=f"#{n + 1}  {h['score']:+.3f}")
                for n, h in enumerate(item["hits"])]
        found = any(h["truth"] for h in item["hits"])
        if item["truth"] and not found:
            hits.append("<div class='sep'>&hellip;</div>" + show(item["truth"][0], truth=True,
                        label=f"#{item['rank']}" if item["rank"] else "not retrieved"))
        if item.get("note"):
            note = item["note"]
        elif not item["truth"]:
            note = "no ground truth for this query"
        elif item["rank"] is None:
            note = "ground truth not retrieved (outside the shortlist): a miss at every K"
        else:
            note = f"ground truth rank {item['rank']} of {item['n_gallery']}"
        return (f"<div class='row'><div class='q'>{query}</div><div class='hits'>{''.join(hits)}</div>"
                f"<div class='note'>{_e(note)}</div></div>")


def _scene_descriptions(cache: Path) -> dict[str, str]:
    """Image id -> a short description of its scene, from the ``truth/*_scenes.json`` beside
    the cache's source folder (the demo writes them; a real dataset has none: empty)."""
    import json

    from featvlr.evaluation.inputs import source_truth_folder

    folder = source_truth_folder(cache)
    if folder is None:  # a cache without provenance: ids alone
        return {}
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*_scenes.json")):
        try:
            scenes = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for name, sc in scenes.items() if isinstance(scenes, dict) else ():
            try:
                objs = sc["objects"]
                text = ", ".join(f"a {o['size']} {o['colour']} {o['category']}" for o in objs)
                rels = "; ".join(f"{objs[a]['category']} {rel} {objs[b]['category']}"
                                 for a, rel, b in sc.get("relations", []))
                out[str(name)] = f"{sc['scene']}: {text}" + (f"; {rels}" if rels else "")
            except (KeyError, TypeError, ValueError, IndexError):
                continue
    return out


def _relative(file: str, folder: Path) -> str:
    try:
        return Path(os.path.relpath(file, folder)).as_posix()
    except ValueError:  # another drive
        return Path(file).resolve().as_uri()


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }}
.meta {{ color: #555; }} .row {{ display: grid; grid-template-columns: max-content 1fr; align-items: start;
  gap: 6px 16px; padding: 10px 0; border-bottom: 1px solid #eee; }}
.q {{ display: flex; gap: 6px; }} .hits {{ display: flex; gap: 6px; flex-wrap: wrap; }}
.card {{ width: 150px; border: 2px solid #ccc; border-radius: 6px; padding: 6px; background: #fafafa;
  font-size: 12px; }}
.q .card {{ border-color: #5477c4; background: #eef2fb; }} .card.mod {{ border-color: #b58a2a; background: #fbf6ea; }}
.card.gt, span.gt {{ border-color: #2e9d4b; background: #eaf7ee; }} span.gt {{ padding: 0 4px; }}
.head {{ font-weight: 600; margin-bottom: 4px; }} .id {{ color: #666; font-family: monospace; }}
.card img {{ width: 100%; height: 110px; object-fit: cover; border-radius: 4px; }}
.card ul {{ margin: 4px 0 0 14px; padding: 0; }} .sep {{ align-self: center; }}
.note {{ grid-column: 1 / -1; color: #555; font-size: 12px; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_run_examples(method: Any, config: Any, run: str | Path, cache: str | Path, split: str, n: int,
                       path: str | Path, device: Any = "cpu", scenarios: list[str] | None = None) -> Path:
    """:func:`write_examples` for a method ``featvlr eval`` has loaded from ``run``; the
    queries are drawn with the run's seed (``train.seed``)."""
    from featvlr.core.checkpoint import resolve_checkpoint
    from featvlr.inference import RetrievalModel

    model = RetrievalModel(method, config, checkpoint=resolve_checkpoint(run), cache=Path(cache),
                           device=torch.device(device))
    seed = int(getattr(getattr(config, "train", None), "seed", 0) or 0)
    return write_examples(model, path, split=split, n=n, seed=seed, scenarios=scenarios)
