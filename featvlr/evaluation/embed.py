"""Embedding a store split with a method: every image and text (cross-modal), or every
composed query and gallery image (composed), in split row order, the method in eval mode.

The first batch of each side is checked for the keys the method's encoders read
(:func:`check_encoder_batch`), so a cache that lacks them (pooled text vectors only, no
regions) is one error naming the key and where it comes from."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from featvlr.core.errors import FeatvlrError
from featvlr.data import iter_image_batches, iter_text_batches
from featvlr.data.composed import ComposedQueries, iter_query_batches, read_queries
from featvlr.methods.base import IMAGE_KEYS, TEXT_KEYS
from featvlr.retrieval import as_index


def check_encoder_batch(method: Any, batch: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise :class:`~featvlr.core.errors.ConfigError` when ``batch`` (an image-only or a
    text-only batch: ``keys`` is :data:`~featvlr.methods.base.IMAGE_KEYS` or
    :data:`~featvlr.methods.base.TEXT_KEYS`) lacks one of ``keys`` that the method declares
    in ``batch_keys`` (:meth:`~featvlr.methods.base.Method.check_batch`). Keys that only
    training options ask for (``required_batch_keys``, e.g. ``global_image`` for a loss's
    reference features) are not asked of evaluation batches; an object without
    ``check_batch`` is not checked."""
    check = getattr(method, "check_batch", None)
    if check is None:
        return
    declared = set(getattr(method, "batch_keys", ()))
    check(batch, keys=tuple(k for k in keys if k in declared))


def concat_outputs(parts: list[Any]) -> Any:
    """Concatenate encoder outputs along dim 0: tensors, or dicts of tensors (padded token
    features and masks, zero/False padded to the largest size in the other dims)."""
    if not parts:
        raise FeatvlrError("nothing to concatenate: the split has no rows")
    if isinstance(parts[0], dict):
        return {key: concat_outputs([p[key] for p in parts]) for key in parts[0]}
    if not isinstance(parts[0], torch.Tensor):
        raise FeatvlrError(f"encoders must return tensors or dicts of tensors, got {type(parts[0]).__name__}")
    if parts[0].ndim <= 1:
        return torch.cat(parts, dim=0)
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim)]
    padded = []
    for p in parts:
        if list(p.shape[1:]) != shape:
            pad: list[int] = []
            for d in reversed(range(1, p.ndim)):
                pad += [0, shape[d - 1] - p.shape[d]]
            p = torch.nn.functional.pad(p, pad)
        padded.append(p)
    return torch.cat(padded, dim=0)


def _reorder(out: Any, ids: torch.Tensor | None, n: int) -> Any:
    if ids is None:
        return out
    if len(ids) != n or not torch.equal(torch.sort(ids).values, torch.arange(n)):
        raise FeatvlrError(f"the batches did not cover the {n} rows of the split exactly once")
    if torch.equal(ids, torch.arange(n)):
        return out
    inv = torch.empty_like(ids)
    inv[ids] = torch.arange(n)
    if isinstance(out, dict):
        return {k: v[inv.to(v.device)] for k, v in out.items()}
    return out[inv.to(out.device)]


def _run_encoder(encode: Callable[[dict], Any], batches, id_key: str, n: int,
                 check: Callable[[dict], None] | None = None) -> Any:
    """``encode`` over ``batches``, concatenated in row order; ``check`` is called on the
    first batch before anything is encoded."""
    outs, ids = [], []
    for batch in batches:
        if check is not None and not outs:
            check(batch)
        outs.append(encode(batch))
        if id_key in batch:
            ids.append(as_index(batch[id_key]).cpu())
    out = concat_outputs(outs)
    return _reorder(out, torch.cat(ids) if len(ids) == len(outs) and ids else None, n)


@torch.no_grad()
def embed_split(method: Any, split: Any, *, batch_size: int = 512, device: str | torch.device = "cpu",
                max_tokens: int = 0) -> tuple[Any, Any]:
    """Run a method's encoders over every image and text of a store split.

    Args:
        method: a :class:`~featvlr.methods.base.Method` (put in eval mode for the call).
        split: a :class:`~featvlr.cache.store.StoreSplit`.
        batch_size, device: passed to :func:`featvlr.data.iter_image_batches` and
            :func:`featvlr.data.iter_text_batches`.

    Returns:
        ``(images, texts)``: ``[n_images, d]`` and ``[n_texts, d]`` tensors in split row order
        (for pairwise methods, dicts of tensors concatenated along dim 0).

    Raises:
        ConfigError: the split lacks features the encoders read (:func:`check_encoder_batch`).
    """
    was_training = method.training
    method.eval()
    try:
        images = _run_encoder(method.encode_images, iter_image_batches(split, batch_size, device),
                              "image_ids", split.n_images, lambda b: check_encoder_batch(method, b, IMAGE_KEYS))
        texts = _run_encoder(method.encode_texts, iter_text_batches(split, batch_size, device, max_tokens),
                             "text_ids", split.n_texts, lambda b: check_encoder_batch(method, b, TEXT_KEYS))
    finally:
        method.train(was_training)
    return images, texts


@torch.no_grad()
def embed_composed_split(method: Any, split: Any, *, batch_size: int = 512,
                         device: torch.device | str = "cpu", queries: ComposedQueries | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(queries [Q, d], gallery [N, d])`` embeddings of a composed split (``method.encode_queries``
    and ``method.encode_images``), in row order, method in eval mode."""
    q = queries if queries is not None else read_queries(split)
    was_training = method.training
    method.eval()
    try:
        qs = [method.encode_queries(b) for b in iter_query_batches(split, batch_size, device, q)]
        gs = [method.encode_images(b) for b in iter_image_batches(split, batch_size, device)]
    finally:
        method.train(was_training)
    return torch.cat(qs).float(), torch.cat(gs).float()
