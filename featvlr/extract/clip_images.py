"""Raw images of a composed split, encoded into global vectors by a local vision backbone.

The images go through :class:`~featvlr.extract.vision_backbone.VisionBackbone`, the same
module as ``featvlr extract images``: a sentence-transformers CLIP folder (``clip_model``)
gives CLIP's projected image embeddings, as ``SentenceTransformer.encode`` does; any other
vision folder (``backbone``) gives its pooled vector.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from featvlr.core.errors import InputError
from featvlr.extract.composed_readers import ComposedSplit


def image_path(dataset: str, images_dir: Path, split: ComposedSplit, name: str) -> Path:
    rel = split.paths.get(name, name)
    if dataset == "fashioniq":
        for ext in (".jpg", ".png", ".jpeg", ""):
            p = images_dir / f"{rel}{ext}"
            if p.is_file():
                return p
        return images_dir / f"{rel}.jpg"
    return images_dir / rel


def encode_images(backbone, paths: list[Path], batch_size: int, progress: bool, workers: int = 0) -> np.ndarray:
    """Global vectors ``float32 [N, G]`` of the image files ``paths`` (a
    :class:`~featvlr.extract.vision_backbone.VisionBackbone`); an unreadable file raises
    :class:`InputError` naming it."""
    from featvlr.core.runlog import progress_bar

    out = np.zeros((len(paths), backbone.global_dim), np.float32)
    with progress_bar(len(paths), "images", enabled=progress, stream=sys.stderr) as bar:
        for rows, _, pooled, bad in backbone.iter_encode(paths, batch_size=batch_size, workers=workers,
                                                         dtype=np.float32, regions=False):
            if bad:
                row, why = bad[0]
                raise InputError(paths[row], why)
            out[rows] = pooled
            bar.update(len(rows))
    return out
