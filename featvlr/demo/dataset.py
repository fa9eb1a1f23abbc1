"""``make_demo_dataset`` and the checks of a demo folder."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.core.errors import ConfigError, InputError
from featvlr.core.fileio import atomic_dir
from featvlr.demo.composed import SET_SIZE
from featvlr.demo.vocabulary import ATTRIBUTES, CATEGORIES, RELATIONS, SCENES
from featvlr.demo.writers import (
    CIRR_SPLITS,
    DEMO_FORMAT,
    DEMO_FORMAT_VERSION,
    META_NAME,
    dump_json,
    generate,
    readme,
)

DEMO_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # precomp splits (images; captions are 5x)
    "n_train": 1500,
    "n_dev": 200,
    "n_test": 200,
    "n_regions": 12,
    "region_dim": 256,
    "visual_noise": 1.0,  # multiplies every noise term of the region features
    # composed split (CIRR layout)
    "composed": True,
    "n_cirr_train": 2000,  # triplets
    "n_cirr_val": 300,
    "n_cirr_test": 200,
    # triplets drawn from each 6-image set (at most 10: 5 edits x 2 directions); fewer per
    # set means more sets, so a larger gallery for the same number of triplets
    "cirr_pairs_per_set": {"train": 4, "val": 3, "test1": 3},
    "global_dim": 128,
    "n_aug": 4,
}


def _check_params(p: dict) -> None:
    for key in ("n_train", "n_dev", "n_test", "n_cirr_train", "n_cirr_val", "n_cirr_test"):
        if not isinstance(p[key], (int, np.integer)) or p[key] < 1:
            raise ConfigError(f"demo: {key} must be a positive integer, got {p[key]!r}")
    if not isinstance(p["n_regions"], (int, np.integer)) or p["n_regions"] < 2:
        raise ConfigError(f"demo: n_regions must be an integer >= 2, got {p['n_regions']!r}")
    for key in ("region_dim", "global_dim"):
        if not isinstance(p[key], (int, np.integer)) or p[key] < 8:
            raise ConfigError(f"demo: {key} must be an integer >= 8, got {p[key]!r}")
    if not isinstance(p["n_aug"], (int, np.integer)) or p["n_aug"] < 0:
        raise ConfigError(f"demo: n_aug must be a non-negative integer, got {p['n_aug']!r}")
    if isinstance(p["visual_noise"], bool) or not isinstance(p["visual_noise"], (int, float, np.floating)) \
            or not 0 <= p["visual_noise"] <= 10:
        raise ConfigError(f"demo: visual_noise must be a number in [0, 10], got {p['visual_noise']!r}")
    if not isinstance(p["seed"], (int, np.integer)) or p["seed"] < 0:
        raise ConfigError(f"demo: seed must be a non-negative integer, got {p['seed']!r}")
    pps = p["cirr_pairs_per_set"]
    if not isinstance(pps, dict) or set(pps) != set(CIRR_SPLITS) or \
            any(not isinstance(v, (int, np.integer)) or not 1 <= v <= 2 * (SET_SIZE - 1) for v in pps.values()):
        raise ConfigError(f"demo: cirr_pairs_per_set must map {list(CIRR_SPLITS)} to integers in 1..10, got {pps!r}")


def make_demo_dataset(out_dir: str | os.PathLike, *, seed: int = DEMO_DEFAULTS["seed"],
                      n_train: int = DEMO_DEFAULTS["n_train"], n_dev: int = DEMO_DEFAULTS["n_dev"],
                      n_test: int = DEMO_DEFAULTS["n_test"], n_regions: int = DEMO_DEFAULTS["n_regions"],
                      region_dim: int = DEMO_DEFAULTS["region_dim"],
                      visual_noise: float = DEMO_DEFAULTS["visual_noise"], composed: bool = DEMO_DEFAULTS["composed"],
                      n_cirr_train: int = DEMO_DEFAULTS["n_cirr_train"],
                      n_cirr_val: int = DEMO_DEFAULTS["n_cirr_val"],
                      n_cirr_test: int = DEMO_DEFAULTS["n_cirr_test"],
                      cirr_pairs_per_set: dict[str, int] | None = None,
                      global_dim: int = DEMO_DEFAULTS["global_dim"], n_aug: int = DEMO_DEFAULTS["n_aug"],
                      overwrite: bool = False) -> Path:
    """Write the demo dataset into ``out_dir`` and return it.

    The folder is built as ``<out_dir>.partial`` and renamed onto ``out_dir`` when complete
    (:func:`featvlr.core.fileio.atomic_dir`).
    An existing complete demo folder is replaced only with ``overwrite=True``; a non-empty
    folder that is not a demo dataset is never replaced. Raises ``InputError`` for either.
    """
    out = Path(out_dir)
    params = {
        "seed": seed, "n_train": n_train, "n_dev": n_dev, "n_test": n_test, "n_regions": n_regions,
        "region_dim": region_dim, "visual_noise": visual_noise, "composed": bool(composed),
        "n_cirr_train": n_cirr_train, "n_cirr_val": n_cirr_val, "n_cirr_test": n_cirr_test,
        "cirr_pairs_per_set": dict(cirr_pairs_per_set if cirr_pairs_per_set is not None
                                   else DEMO_DEFAULTS["cirr_pairs_per_set"]),
        "global_dim": global_dim, "n_aug": n_aug,
    }
    _check_params(params)
    params = {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v)
              for k, v in params.items()}
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        if demo_is_complete(out):
            if not overwrite:
                raise InputError(out, "a complete demo dataset is already here; pass overwrite=True "
                                      "(--overwrite) to replace it")
        elif any(out.iterdir()) and not (out / META_NAME).exists():
            raise InputError(out, "the folder exists, is not empty and is not a featvlr demo dataset; "
                                  "refusing to write into it")
    with atomic_dir(out) as partial:
        sizes = generate(partial, params)
        (partial / "README.txt").write_text(readme(params, sizes), encoding="utf-8")
        files = {}
        for path in sorted(partial.rglob("*")):
            if path.is_file():
                files[path.relative_to(partial).as_posix()] = path.stat().st_size
        meta = {
            "format": DEMO_FORMAT,
            "format_version": DEMO_FORMAT_VERSION,
            "seed": params["seed"],
            "params": params,
            "sizes": sizes,
            "world": {"categories": list(CATEGORIES), "attributes": list(ATTRIBUTES),
                      "relations": list(RELATIONS), "scenes": list(SCENES)},
            "files": files,
        }
        dump_json(partial / META_NAME, meta)
    return out


def load_demo_meta(out_dir: str | os.PathLike) -> dict:
    """The ``demo_meta.json`` of a demo folder (``InputError`` when missing or unreadable)."""
    path = Path(out_dir) / META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable demo metadata file: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != DEMO_FORMAT:
        raise InputError(path, "not a featvlr demo metadata file")
    return meta


def demo_is_complete(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a finished demo dataset: metadata readable, every listed file present
    with its recorded size."""
    root = Path(out_dir)
    try:
        meta = load_demo_meta(root)
    except InputError:
        return False
    if meta.get("format_version") != DEMO_FORMAT_VERSION or not isinstance(meta.get("files"), dict):
        return False
    for rel, size in meta["files"].items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def demo_sources(out_dir: str | os.PathLike) -> dict[str, Path | None]:
    """Paths that the extract functions take for a demo folder.

    Keys: ``precomp_root`` (for ``extract_precomp``), ``cirr_root``, ``image_features`` and
    ``aug_features`` (for ``extract_composed('cirr', ...)``; None where not written).
    """
    root = Path(out_dir)
    cirr = root / "cirr"
    feats, aug = cirr / "image_features.npz", cirr / "image_features_aug.npz"
    return {
        "precomp_root": root,
        "cirr_root": cirr if cirr.is_dir() else None,
        "image_features": feats if feats.is_file() else None,
        "aug_features": aug if aug.is_file() else None,
    }
