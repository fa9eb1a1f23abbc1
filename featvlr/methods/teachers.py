"""Frozen teachers for distillation (RVLR, Yang et al., "Rebalanced Vision-Language Retrieval
Considering Structure-Aware Distillation", IEEE TIP 2024).

Two kinds of teacher, both constants during training:

- **features** (RVLR's default, the paper's modality-specific teachers): the cached
  uni-modal features themselves, read from the batch: the pooled sentence embedding
  ``pooled_text`` for texts, and the mean of the valid regions (or the ``global_image``
  vector) for images (:func:`features_teacher`).
- **run**: the embeddings of an earlier featvlr run (RVLR's ``model.teacher: base`` trains
  a ``vse`` run first and uses it: a joint cross-modal space, not uni-modal teachers). They
  are computed once over the training split with the run's method (the trainer's ``load_run``) and
  cached beside the feature cache, in ``<cache>.teachers/<run>-<ckpt>-<split>-<hash>.h5``
  (the hash covers the checkpoint file, its size and modification time, the feature cache
  and the split, so retraining the teacher or rebuilding the cache gives a new file). The
  file is written to a temporary name and renamed, so a crash never leaves a half-written
  teacher. A :class:`TeacherTable` holds the rows in memory and looks them up per batch by
  ``image_ids`` / ``text_ids``.

Example::

    path = ensure_teacher_cache("runs/f30k_vse", "features/f30k_precomp.h5", "train", load_method)
    table = load_teacher_cache(path)
    img, txt = table.lookup(batch["image_ids"], batch["text_ids"], device)
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from featvlr.core.device import pick_device
from featvlr.core.errors import ConfigError, InputError
from featvlr.core.fileio import atomic_path
from featvlr.modules import masked_mean

TEACHER_FORMAT = "featvlr-teacher-v1"
IMAGE_SOURCES = ("regions", "global")


def features_teacher(batch: dict[str, torch.Tensor], image_source: str = "regions"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image [B, Di], text [B, Dt])`` teacher features straight from a training batch.

    Text: ``pooled_text``. Image: the mean of the valid regions (``image_source="regions"``;
    under region dropout, of the kept regions) or ``global_image`` (``"global"``). Detached
    float32.
    """
    if image_source == "global":
        image = batch["global_image"].float()
    else:
        image = masked_mean(batch["regions"].float(), batch["region_mask"])
    return image.detach(), batch["pooled_text"].float().detach()


@dataclass
class TeacherTable:
    """Teacher embeddings of every image row ``[N_img, d]`` and caption row ``[N_txt, d]`` of a
    split, held on the CPU; :meth:`lookup` returns a batch's rows as float32 on ``device``."""

    image: torch.Tensor
    text: torch.Tensor
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def lookup(self, image_ids: torch.Tensor, text_ids: torch.Tensor, device: torch.device | str
               ) -> tuple[torch.Tensor, torch.Tensor]:
        img_rows, txt_rows = image_ids.detach().cpu().long(), text_ids.detach().cpu().long()
        for rows, table, what in ((img_rows, self.image, "image"), (txt_rows, self.text, "text")):
            if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= table.shape[0]):
                raise InputError(self.source, f"the teacher has {table.shape[0]} {what} rows but a batch asks "
                                 f"for row {int(rows.max())}: it was computed on another split or cache")
        image = self.image[img_rows].to(device, torch.float32, non_blocking=True)
        text = self.text[txt_rows].to(device, torch.float32, non_blocking=True)
        return image, text


def teacher_cache_path(checkpoint: str | os.PathLike, feature_cache: str | os.PathLike, split: str) -> Path:
    """Where the teacher embeddings of ``checkpoint`` over ``split`` of ``feature_cache`` live."""
    ckpt, cache = Path(checkpoint).resolve(), Path(feature_cache).resolve()
    if not ckpt.exists():
        raise InputError(ckpt, "no such teacher checkpoint")
    if not cache.exists():
        raise InputError(cache, "no such feature cache")
    ck, ca = ckpt.stat(), cache.stat()
    key = json.dumps({"checkpoint": str(ckpt), "ckpt_mtime": ck.st_mtime_ns, "ckpt_size": ck.st_size,
                      "cache": str(cache), "cache_mtime": ca.st_mtime_ns, "cache_size": ca.st_size,
                      "split": split, "format": TEACHER_FORMAT}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    run_name = ckpt.parent.parent.name if ckpt.parent.name == "ckpt" else ckpt.stem
    return Path(str(feature_cache) + ".teachers") / f"{run_name}-{ckpt.stem}-{split}-{digest}.h5"


@torch.no_grad()
def compute_teacher_features(checkpoint: str | os.PathLike, feature_cache: str | os.PathLike, split: str,
                             load_run: Callable[..., Any], *,
                             device: str | torch.device = "auto", batch_size: int = 512
                             ) -> tuple[np.ndarray, np.ndarray, str]:
    """Embed every image and caption of ``split`` with the run at ``checkpoint``.

    ``load_run`` rebuilds the run (:data:`featvlr.methods.base.LoadRun`). Returns
    ``(image [N_img, d], text [N_txt, d], method name)`` as float32 arrays.
    """
    from featvlr.cache.store import FeatureStore
    from featvlr.data import iter_image_batches, iter_text_batches

    dev = pick_device(device)
    method, cfg = load_run(checkpoint, dev)
    if method.pairwise or method.task != "cross_modal":
        raise ConfigError(f"model.teacher: the {cfg.method!r} run scores pairs of token sets; a teacher must "
                          "embed images and captions as single vectors")
    part = FeatureStore(feature_cache).split(split)
    images = [method.encode_images(b).float().cpu() for b in iter_image_batches(part, batch_size, dev)]
    texts = [method.encode_texts(b).float().cpu()
             for b in iter_text_batches(part, batch_size, dev, max_tokens=cfg.data.max_tokens)]
    return torch.cat(images).numpy(), torch.cat(texts).numpy(), cfg.method


def write_teacher_cache(path: str | os.PathLike, image: np.ndarray, text: np.ndarray, attrs: dict) -> Path:
    """Write teacher embeddings (float16) atomically (:func:`featvlr.core.fileio.atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("image", data=np.asarray(image, dtype=np.float16))
        h5.create_dataset("text", data=np.asarray(text, dtype=np.float16))
        h5.attrs["format"] = TEACHER_FORMAT
        h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key, value in attrs.items():
            h5.attrs[key] = value
    return path


def ensure_teacher_cache(checkpoint: str | os.PathLike, feature_cache: str | os.PathLike, split: str,
                         load_run: Callable[..., Any] | None, *,
                         device: str | torch.device = "auto", batch_size: int = 512) -> Path:
    """The teacher cache file of ``checkpoint`` over ``split``: reused when present, else
    computed with :func:`compute_teacher_features` and written atomically."""
    path = teacher_cache_path(checkpoint, feature_cache, split)
    if path.exists():
        return path
    if load_run is None:
        raise ConfigError(f"model.teacher: {checkpoint} has no cached embeddings over {split!r} and no run loader "
                          "was given to compute them (the trainer gives one)")
    image, text, method = compute_teacher_features(checkpoint, feature_cache, split, load_run, device=device,
                                                   batch_size=batch_size)
    return write_teacher_cache(path, image, text, {
        "checkpoint": str(Path(checkpoint).resolve()), "feature_cache": str(Path(feature_cache).resolve()),
        "split": split, "method": method, "dim": int(image.shape[1])})


def teacher_dim(path: str | os.PathLike) -> int:
    """Embedding size stored in a teacher cache file."""
    with h5py.File(_checked(path), "r") as h5:
        return int(h5["image"].shape[1])


def _checked(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such teacher cache (it is written by the rvlr method's prepare step)")
    return path


def load_teacher_cache(path: str | os.PathLike) -> TeacherTable:
    """Read a teacher cache file into a :class:`TeacherTable` (float16 rows on the CPU)."""
    path = _checked(path)
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != TEACHER_FORMAT:
                raise InputError(path, "not a featvlr teacher cache (missing or unknown format tag)")
            image, text = np.asarray(h5["image"][:]), np.asarray(h5["text"][:])
    except OSError as exc:
        raise InputError(path, f"not a readable teacher cache: {exc}") from None
    if image.ndim != 2 or text.ndim != 2 or image.shape[1] != text.shape[1]:
        raise InputError(path, f"teacher shapes {image.shape} and {text.shape} do not form a teacher")
    return TeacherTable(torch.from_numpy(image), torch.from_numpy(text), source=str(path))
