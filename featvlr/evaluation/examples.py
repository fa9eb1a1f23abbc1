"""The examples page of a run (``featvlr eval RUN --examples N``): ``examples.html`` beside the
results JSON, with N seeded queries per scenario and what the run retrieves for them.

Scenarios: ``t2i`` (caption -> images) and ``i2t`` (image -> captions) for cross-modal
runs, ``composed`` (reference + modifier -> images) for composed runs. Each query shows its
top 5 (the ranking of :func:`featvlr.inference.rank_queries`, the evaluation's), the ground
truth marked, and the ground truth's rank by the evaluation's rule (:func:`featvlr.retrieval.ranks`:
1-based here, ties pessimistic; a ground truth outside a GLS shortlist is a miss). Images are
thumbnails when the cache records their folder (``sources["images_dir"]``), else their id
and captions. The queries are drawn with ``numpy.random.default_rng(seed)``, so the same run
and seed show the same queries. The page is one self-contained HTML file.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvlr.fileio import atomic_write_text
from featvlr.retrieval import EmbeddingScores, group_positives, ranks

TOP = 5


def _take(out: Any, rows: torch.Tensor) -> Any:
    if isinstance(out, dict):
        return {k: v.index_select(0, rows.to(v.device)) for k, v in out.items()}
    return out.index_select(0, rows.to(out.device))


def _draw(n: int, count: int, seed: int, allowed: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(n) if allowed is None else np.asarray(allowed)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)) if len(pool) else pool


def example_queries(model: Any, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Per scenario: the drawn queries, their top :data:`TOP` and the ground truth's rank.

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
            items.append({"query": {"reference": int(q.reference[r]), "text": modifier},
                          "hits": _hits(scores[i], top[i], {t}), "truth": [t] if t >= 0 else [],
                          "rank": _rank(int(rk[i]), sp.n_images), "n_gallery": sp.n_images})
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
    return out


def _hits(scores: torch.Tensor, rows: torch.Tensor, truth: set[int]) -> list[dict[str, Any]]:
    return [{"row": int(r), "score": float(s), "truth": int(r) in truth}
            for s, r in zip(scores.tolist(), rows.tolist()) if r >= 0]


def _rank(rank0: int, n_gallery: int) -> int | None:
    """1-based rank; None when the query has no ground truth or it was not retrieved."""
    return None if rank0 < 0 or rank0 >= n_gallery else rank0 + 1


def write_examples(model: Any, path: str | Path, *, split: str = "test", n: int = 8, seed: int = 0) -> Path:
    """Write the examples page of ``model`` (a :class:`~featvlr.inference.RetrievalModel`) on
    ``split`` to ``path`` (``examples.html``); see the module docstring."""
    path = Path(path)
    sp = model.split(split)
    sections = example_queries(model, sp.name, n, seed)
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
        files = model.image_files(split.name)
        self.files = [None if f is None else _relative(f, folder) for f in files] if files else None

    def image(self, row: int, *, truth: bool = False, score: float | None = None, label: str = "") -> str:
        inner = f"<div class='id'>{_e(self.ids[row])}</div>"
        if self.files and self.files[row]:
            inner = f"<img src='{_e(self.files[row])}' alt='{_e(self.ids[row])}' loading='lazy'>" + inner
        elif self.caps.get(row):
            inner += "<ul>" + "".join(f"<li>{_e(c)}</li>" for c in self.caps[row][:3]) + "</ul>"
        return self._card(inner, truth, score, label)

    def text(self, row: int, *, truth: bool = False, score: float | None = None, label: str = "") -> str:
        img = int(self.txt2img[row]) if row < len(self.txt2img) else -1
        inner = f"<div class='txt'>{_e(self.texts[row] if self.texts else row)}</div>"
        if img >= 0:
            inner += f"<div class='id'>image {_e(self.ids[img])}</div>"
        return self._card(inner, truth, score, label)

    @staticmethod
    def _card(inner: str, truth: bool, score: float | None, label: str) -> str:
        head = label or (f"{score:+.3f}" if score is not None else "")
        cls = "card gt" if truth else "card"
        return f"<div class='{cls}'><div class='head'>{_e(head)}{' &#10003;' if truth else ''}</div>{inner}</div>"

    def row(self, scenario: str, item: dict[str, Any]) -> str:
        q = item["query"]
        if scenario == "t2i":
            query = self.text(q["text_row"], label="query")
        elif scenario == "i2t":
            query = self.image(q["image_row"], label="query")
        else:
            query = self.image(q["reference"], label="reference") + \
                f"<div class='card mod'><div class='head'>modifier</div><div class='txt'>{_e(q['text'] or '(no raw text in the cache)')}</div></div>"
        show = self.text if scenario == "i2t" else self.image
        hits = [show(h["row"], truth=h["truth"], score=h["score"], label=f"#{n + 1}  {h['score']:+.3f}")
                for n, h in enumerate(item["hits"])]
        found = any(h["truth"] for h in item["hits"])
        if item["truth"] and not found:
            hits.append("<div class='sep'>&hellip;</div>" + show(item["truth"][0], truth=True,
                        label=f"#{item['rank']}" if item["rank"] else "not retrieved"))
        if not item["truth"]:
            note = "no ground truth for this query"
        elif item["rank"] is None:
            note = "ground truth not retrieved (outside the shortlist): a miss at every K"
        else:
            note = f"ground truth rank {item['rank']} of {item['n_gallery']}"
        return (f"<div class='row'><div class='q'>{query}</div><div class='hits'>{''.join(hits)}</div>"
                f"<div class='note'>{_e(note)}</div></div>")


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
                       path: str | Path, device: Any = "cpu") -> Path:
    """:func:`write_examples` for a method ``featvlr eval`` has loaded from ``run``; the
    queries are drawn with the run's seed (``train.seed``)."""
    from featvlr.checkpoint import resolve_checkpoint
    from featvlr.inference import RetrievalModel

    model = RetrievalModel(method, config, checkpoint=resolve_checkpoint(run), cache=Path(cache),
                           device=torch.device(device))
    seed = int(getattr(getattr(config, "train", None), "seed", 0) or 0)
    return write_examples(model, path, split=split, n=n, seed=seed)
