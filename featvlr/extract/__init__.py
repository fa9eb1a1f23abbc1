"""Readers of the data layouts users already have, and the frozen text encoder.

* :mod:`featvlr.extract.precomp`: SCAN/BUTD precomp folders (Flickr30K, COCO).
* :mod:`featvlr.extract.composed`: CIRR, FashionIQ and Shoes composed-retrieval JSON.
* :mod:`featvlr.extract.text_encoder`: :class:`TextEncoder` (sentence-transformers).

Heavy libraries (torch, sentence-transformers) load only when an encoder is built.
"""
from __future__ import annotations

__all__ = ["TextEncoder", "extract_precomp", "extract_composed"]


def __getattr__(name: str):
    if name == "TextEncoder":
        from featvlr.extract.text_encoder import TextEncoder

        return TextEncoder
    if name == "extract_precomp":
        from featvlr.extract.precomp import extract_precomp

        return extract_precomp
    if name == "extract_composed":
        from featvlr.extract.composed import extract_composed

        return extract_composed
    raise AttributeError(name)
