"""Raw images of a composed split and their encoding by a sentence-transformers CLIP model."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from featvlr.errors import InputError
from featvlr.sources.composed_readers import ComposedSplit


def image_path(dataset: str, images_dir: Path, split: ComposedSplit, name: str) -> Path:
    rel = split.paths.get(name, name)
    if dataset == "fashioniq":
        for ext in (".jpg", ".png", ".jpeg", ""):
            p = images_dir / f"{rel}{ext}"
            if p.is_file():
                return p
        return images_dir / f"{rel}.jpg"
    return images_dir / rel


def encode_images(model, paths: list[Path], batch_size: int, progress: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from featvlr.runlog import progress_bar

    out = []
    with progress_bar(len(paths), "images", enabled=progress, stream=sys.stderr) as bar:
        for start in range(0, len(paths), batch_size):
            batch = []
            for p in paths[start:start + batch_size]:
                try:
                    with Image.open(p) as im:
                        batch.append(im.convert("RGB"))
                except (OSError, UnidentifiedImageError) as exc:
                    raise InputError(p, f"cannot read the image ({exc})") from None
            out.append(np.asarray(model.encode(batch, batch_size=batch_size, show_progress_bar=False),
                                  dtype=np.float32))
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
