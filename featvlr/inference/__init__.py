"""Using a trained run: encode raw captions and image features, and search a cache split.

- :func:`load` (also ``featvlr.load``): a run folder or checkpoint -> :class:`RetrievalModel`
  with ``encode_texts``, ``encode_images``, ``encode_queries`` (composed) and ``search``.
- :mod:`~featvlr.inference.text`: the cache's text encoder and raw-caption batches.
- :mod:`~featvlr.inference.index`: the gallery index of a run on a split, kept in
  ``<run>/index/``, and a reusable FAISS index.
- :mod:`~featvlr.inference.search`: the evaluation's score sources over encoder outputs.
- :mod:`~featvlr.inference.records`: ranked lists and the JSON record of ``featvlr search``.

Searches rank as ``featvlr eval`` does: the same score sources (GLS: global shortlist, then
local re-rank) and :func:`featvlr.retrieval.topk`.
"""
from __future__ import annotations

from featvlr.inference.index import FaissIndex, GalleryIndex
from featvlr.inference.model import RetrievalModel, load
from featvlr.inference.records import rank_queries, search_record

__all__ = ["FaissIndex", "GalleryIndex", "RetrievalModel", "load", "rank_queries", "search_record"]
