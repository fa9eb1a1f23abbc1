"""The caption -> image index and the ROUGE-L relevance of a split, or of given arrays."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval import as_index, as_tensor
from featvlr.retrieval.metrics import default_txt2img


def first_captions(txt2img: np.ndarray, n_images: int) -> np.ndarray:
    """``[n_images]`` index of each image's first caption (-1 where it has none)."""
    first = np.full(n_images, -1, dtype=np.int64)
    valid = np.nonzero((txt2img >= 0) & (txt2img < n_images))[0]
    # reversed assignment leaves the smallest caption index for each image
    first[txt2img[valid[::-1]]] = valid[::-1]
    return first


class SplitData:
    """The caption -> image index and the relevance of a split or of given arrays."""

    def __init__(self, split_or_arrays: Any, n_images: int | None, n_texts: int | None):
        self.split = None
        self._relevance: Any = None
        self._rel_loaded = False
        self._kinds: dict[str, Any] = {}
        self.txt2img: np.ndarray | None = None
        if split_or_arrays is None:
            pass
        elif isinstance(split_or_arrays, Mapping):
            t = split_or_arrays.get("txt2img", split_or_arrays.get("image_index"))
            self.txt2img = None if t is None else as_index(t).cpu().numpy()
            self._relevance = split_or_arrays.get("relevance")
            self._kinds = dict(split_or_arrays.get("relevance_kinds") or {})
            self._rel_loaded = True
        else:
            self.split = split_or_arrays
            self.txt2img = split_or_arrays.image_index()
            n_images = n_images if n_images is not None else split_or_arrays.n_images
        if n_images is None and self._relevance is not None:
            n_images = int(np.shape(self._relevance)[1])
        if n_images is None and self.txt2img is not None and self.txt2img.size:
            n_images = int(self.txt2img.max()) + 1
        if n_images is None:
            raise FeatvlrError("the number of images is unknown: pass embeddings or a split")
        if self.txt2img is None:
            if n_texts is None:
                raise FeatvlrError("the number of texts is unknown: pass embeddings, txt2img or a split")
            self.txt2img = default_txt2img(n_images, n_texts)
        self.n_images = int(n_images)
        self.n_texts = len(self.txt2img)
        if n_texts is not None and n_texts != self.n_texts:
            raise FeatvlrError(f"{n_texts} text rows but the caption -> image index has {self.n_texts} entries")
        if self.txt2img.size and (self.txt2img.max() >= self.n_images or self.txt2img.min() < -1):
            raise FeatvlrError(f"the caption -> image index points outside the {self.n_images} images")

    def relevance(self, needed_by: str) -> torch.Tensor:
        if not self._rel_loaded:
            self._relevance = self.split.relevance("rougeL") if self.split is not None else None
            self._rel_loaded = True
        if self._relevance is None:
            where = f"relevance/{self.split.name}/rougeL" if self.split is not None else "a relevance matrix"
            raise FeatvlrError(f"scenario {needed_by} needs {where} (ROUGE-L, [n_texts, n_images])")
        rel = as_tensor(self._relevance)
        if tuple(rel.shape) != (self.n_texts, self.n_images):
            raise FeatvlrError(f"the relevance matrix has shape {tuple(rel.shape)}, expected "
                               f"{(self.n_texts, self.n_images)} (texts x images)")
        self._relevance = rel
        return rel

    def relevance_kinds(self) -> list[str]:
        """The relevance kinds at hand (``rougeL`` first; e.g. ``spice`` too)."""
        if self.split is not None:
            return self.split.relevance_kinds()
        return (["rougeL"] if self._relevance is not None else []) + [k for k in self._kinds if k != "rougeL"]

    def relevance_of(self, kind: str, needed_by: str) -> torch.Tensor:
        """The ``[n_texts, n_images]`` relevance of ``kind`` (:meth:`relevance` for ROUGE-L)."""
        if kind == "rougeL":
            return self.relevance(needed_by)
        if kind not in self._kinds and self.split is not None:
            self._kinds[kind] = self.split.relevance(kind)
        rel = as_tensor(self._kinds[kind]) if self._kinds.get(kind) is not None else None
        if rel is None or tuple(rel.shape) != (self.n_texts, self.n_images):
            raise FeatvlrError(f"{needed_by}: relevance {kind!r} is missing or not {(self.n_texts, self.n_images)}")
        self._kinds[kind] = rel
        return rel

    @property
    def has_relevance(self) -> bool:
        if not self._rel_loaded and self.split is not None:
            return self.split.has(f"relevance/{self.split.name}/rougeL")
        return self._relevance is not None


def n_rows(x: Any) -> int | None:
    if x is None:
        return None
    if isinstance(x, dict):
        return int(next(iter(x.values())).shape[0])
    return int(x.shape[0])
