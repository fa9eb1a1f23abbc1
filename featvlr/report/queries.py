"""Where a variant wins and loses against the baseline, query by query.

From the per-query ranks each run writes (``eval/<split>_ranks.npz``: 0-based i2t ranks per
image, t2i ranks per caption; see :func:`featvlr.evaluation.methods.save_query_ranks`),
averaged over a variant's seeds, the test queries whose reciprocal rank changed most in
each direction (so a query moving into the first ranks counts more than one moving from
rank 348 to 296), with the query (caption text or image id), its ground truth and both ranks
(1-based), read from the run's feature cache (``texts/<split>/raw``, image ids).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.report.labels import Variant

DIRECTIONS = {"i2t": "image → text", "t2i": "text → image"}


@dataclass
class QueryChange:
    direction: str
    query: str
    truth: str
    base_rank: float
    other_rank: float

    @property
    def change(self) -> float:
        return self.base_rank - self.other_rank


def mean_ranks(variant: Variant, direction: str) -> np.ndarray | None:
    """Mean 0-based rank per query over the variant's seeds (NaN where a rank is missing)."""
    if any(r.ranks is None or direction not in r.ranks for r in variant.runs):
        return None
    arrays = [np.asarray(r.ranks[direction], dtype=np.float64) for r in variant.runs]
    if len({len(a) for a in arrays}) != 1:
        return None
    stack = np.stack(arrays)
    stack[stack < 0] = np.nan
    return _nanmean(stack)


def _nanmean(stack: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        count = np.isfinite(stack).sum(axis=0)
        return np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)


class _Texts:
    """Captions and image ids of the run's test split, when its cache can be opened."""

    def __init__(self, run: Any):
        self.captions: list[str] | None = None
        self.ids: list[str] | None = None
        self.image_index: np.ndarray | None = None
        cache = (run.config.get("data") or {}).get("cache")
        split = run.test_split
        if not cache or not split:
            return
        path = Path(cache)
        if not path.exists():
            return
        try:
            from featvlr.cache.store import FeatureStore

            store = FeatureStore(path, validate=False)
            st = store.split(split)
            self.captions = st.raw_captions() if st.has(f"texts/{split}/raw") else None
            self.ids = st.image_ids()
            self.image_index = np.asarray(st.image_index())
            store.close()
        except Exception:  # noqa: BLE001 - the table falls back to query numbers
            self.captions = self.ids = self.image_index = None

    def image(self, i: int) -> str:
        return f"image {self.ids[i]}" if self.ids is not None and i < len(self.ids) else f"image #{i}"

    def caption(self, t: int) -> str:
        return f"“{self.captions[t]}”" if self.captions is not None and t < len(self.captions) else f"caption #{t}"

    def image_of(self, t: int) -> int:
        return int(self.image_index[t]) if self.image_index is not None and t < len(self.image_index) else -1

    def first_caption(self, i: int) -> str:
        if self.image_index is None:
            return f"captions of image #{i}"
        rows = np.flatnonzero(self.image_index == i)
        if not len(rows):
            return "(no caption)"
        more = f" (+{len(rows) - 1} more)" if len(rows) > 1 else ""
        return self.caption(int(rows[0])) + more


def rank_changes(baseline: Variant, other: Variant, *, top: int = 5) -> dict[str, dict[str, list[QueryChange]]]:
    """``{direction: {"wins": [...], "losses": [...]}}``: the ``top`` queries whose reciprocal
    mean rank improved most (wins of ``other``) and worsened most (its losses) against
    ``baseline``."""
    texts = _Texts(baseline.runs[0])
    out: dict[str, dict[str, list[QueryChange]]] = {}
    for d in DIRECTIONS:
        a, b = mean_ranks(baseline, d), mean_ranks(other, d)
        if a is None or b is None or len(a) != len(b):
            continue
        # change of reciprocal rank: a query moving into the first ranks counts most
        delta = np.nan_to_num(1.0 / (b + 1) - 1.0 / (a + 1), nan=0.0)
        order = np.argsort(-delta, kind="stable")
        wins = [int(q) for q in order[:top] if delta[q] > 0]
        losses = [int(q) for q in np.argsort(delta, kind="stable")[:top] if delta[q] < 0]

        def item(q: int, d=d, a=a, b=b) -> QueryChange:
            if d == "i2t":
                return QueryChange(d, texts.image(q), texts.first_caption(q), a[q] + 1, b[q] + 1)
            gt = texts.image_of(q)
            return QueryChange(d, texts.caption(q), texts.image(gt) if gt >= 0 else "(cache not found)",
                               a[q] + 1, b[q] + 1)

        out[d] = {"wins": [item(q) for q in wins], "losses": [item(q) for q in losses]}
    return out
