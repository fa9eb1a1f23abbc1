"""A tiny learnable feature cache for engine tests (no text model needed).

Every image has a latent vector; its regions and its 5 captions' tokens are noisy linear
views of it, so a trained dual encoder retrieves far above chance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from featvlr.cache.store import CacheWriter


def write_synthetic_cache(path: Path, *, n_images=(64, 16, 16), regions: int = 6, region_dim: int = 24,
                          text_dim: int = 16, latent: int = 8, seed: int = 0, noise: float = 0.3) -> Path:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((latent, region_dim))
    B = rng.standard_normal((latent, text_dim))
    with CacheWriter(path, text_encoder="synthetic", text_dim=text_dim) as w:
        for split, n in zip(("train", "dev", "test"), n_images):
            z = rng.standard_normal((n, latent))
            reg = z[:, None, :] @ A + noise * rng.standard_normal((n, regions, region_dim))
            w.write(f"images/{split}/regions", reg.astype(np.float32))
            lengths = rng.integers(3, 8, size=5 * n)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            zc = np.repeat(z, 5, axis=0)
            tok = np.repeat(zc, lengths, axis=0) @ B + noise * rng.standard_normal((offsets[-1], text_dim))
            pooled = np.add.reduceat(tok, offsets[:-1], axis=0) / lengths[:, None]
            w.write(f"texts/{split}/tokens", tok.astype(np.float32))
            w.write(f"texts/{split}/offsets", offsets.astype(np.int64))
            w.write(f"texts/{split}/pooled", pooled.astype(np.float32))
            w.write(f"texts/{split}/image_index", np.repeat(np.arange(n), 5).astype(np.int64))
            rel = (rng.random((5 * n, n)) * 0.3).astype(np.float32)
            rel[np.arange(5 * n), np.repeat(np.arange(n), 5)] = 1.0
            w.write(f"relevance/{split}/rougeL", rel)
    return path


def write_tiny_cache(path: Path, *, n_img: int = 6, per: int = 5, d: int = 4,
                     rng: np.random.Generator | int = 0) -> Path:
    """A tiny random cache with one split, ``test`` (no learnable structure): ``n_img`` images of
    3 regions of size ``d``, ``per`` captions each of 1 to 3 tokens, pooled vectors and a
    random ``rougeL`` relevance matrix. ``rng`` is a seed or a generator that goes on being used."""
    rng = np.random.default_rng(rng)
    n_txt = n_img * per
    lengths = rng.integers(1, 4, size=n_txt)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with CacheWriter(path) as w:
        w.write("images/test/regions", rng.normal(size=(n_img, 3, d)).astype(np.float32))
        w.write("texts/test/tokens", rng.normal(size=(int(offsets[-1]), d)).astype(np.float32))
        w.write("texts/test/offsets", offsets)
        w.write("texts/test/pooled", rng.normal(size=(n_txt, d)).astype(np.float32))
        w.write("texts/test/image_index", np.arange(n_txt, dtype=np.int64) // per)
        w.write("relevance/test/rougeL", rng.random((n_txt, n_img)).astype(np.float32))
    return Path(path)


def synthetic_config(cache: Path, *, method: str = "vse", epochs: int = 1, **sections: dict) -> dict:
    """A small run config over a synthetic cache: embed 16, batch 32, i2t/t2i only, no
    progress bars; ``sections`` are merged into (or added as) config sections."""
    cfg = {"method": method, "data": {"cache": str(cache), "dataset": "synthetic"},
           "model": {"embed_dim": 16}, "train": {"epochs": epochs, "batch_size": 32, "progress": False},
           "eval": {"scenarios": ["i2t", "t2i"], "dev_scenarios": ["i2t", "t2i"]}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def write_synthetic_config(path: Path, cache: Path, **options) -> Path:
    """:func:`synthetic_config` written as YAML at ``path``."""
    import yaml

    path.write_text(yaml.safe_dump(synthetic_config(cache, **options)))
    return path

