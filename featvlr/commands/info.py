"""`featvlr info`: what a feature cache holds.

Prints the splits with their image and text counts, every dataset's shape and dtype, the
provenance attributes (format and featvlr versions, creating command, sources, text
encoder, and for raw images the vision backbone's name, folder and preprocessing) and the
size on disk. The cache is opened through :class:`featvlr.cache.store.FeatureStore`,
so a truncated or corrupt file is reported as one clear error. ``--check`` reads every
value (:func:`featvlr.cache.check.check_cache`) and names the split, dataset and first bad row.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer


def describe_cache(path: str | os.PathLike, *, validate: bool = True, check: bool = False) -> dict[str, Any]:
    """A JSON-ready description of a cache: attributes, size and per-split datasets; with
    ``check``, after a scan of every value (``"check"``: datasets and values read)."""
    from featvlr.cache.store import FeatureStore

    store = FeatureStore(path, validate=validate and not check)
    try:
        scanned = None
        if check:
            from featvlr.cache.check import check_cache

            scanned = check_cache(store)
            store.validate()
        info: dict[str, Any] = {
            "path": str(Path(path)),
            "size_bytes": os.path.getsize(path),
            "attrs": store.attrs,
            "splits": {},
        }
        if scanned is not None:
            info["check"] = {"datasets": scanned.datasets, "values": scanned.values}
        for split in store.splits():
            s = store.split_info(split)
            info["splits"][split] = {
                "n_images": s.n_images,
                "n_texts": s.n_texts,
                "datasets": {k: {"shape": list(shape), "dtype": dtype} for k, (shape, dtype) in s.datasets.items()},
            }
        return info
    finally:
        store.close()


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_backbone(backbone: dict[str, Any]) -> list[str]:
    """The lines naming the vision backbone of a raw-image cache: name, folder, outputs and
    preprocessing (``sources["backbone"]``, written by ``featvlr extract images``)."""
    lines = ["  backbone:"]
    for key in ("name", "folder", "class", "regions", "global", "precision"):
        if key in backbone:
            lines.append(f"    {key + ':':15s}{backbone[key]}")
    prep = backbone.get("preprocessing")
    if prep:
        lines.append(f"    {'preprocessing:':15s}{json.dumps(prep, separators=(', ', ': '))}")
    return lines


def format_info(info: dict[str, Any]) -> str:
    """The human-readable text that `featvlr info` prints."""
    attrs = dict(info["attrs"])
    lines = [f"{info['path']}  ({human_size(info['size_bytes'])} on disk)"]
    for key in ("format_version", "featvlr_version", "created", "command", "text_encoder", "text_dim", "dtype"):
        if key in attrs:
            lines.append(f"  {key + ':':17s}{attrs.pop(key)}")
    sources = attrs.pop("sources", None)
    for key, value in attrs.items():
        lines.append(f"  {key + ':':17s}{value}")
    if isinstance(sources, dict) and isinstance(sources.get("backbone"), dict):
        sources = dict(sources)
        lines += format_backbone(sources.pop("backbone"))
    if sources:
        text = json.dumps(sources, indent=2) if not isinstance(sources, str) else sources
        lines.append("  sources:")
        lines += ["    " + line for line in text.splitlines()]
    if not info["splits"]:
        lines.append("  (no splits)")
    for split, s in info["splits"].items():
        lines.append(f"split {split}: {s['n_images']} images, {s['n_texts']} texts")
        for name, d in s["datasets"].items():
            shape = "x".join(str(x) for x in d["shape"]) or "scalar"
            dtype = "str" if d["dtype"] == "object" else d["dtype"]
            lines.append(f"  {name:28s} {shape:>20s}  {dtype}")
    if "check" in info:
        lines.append(f"check: {info['check']['datasets']} datasets of the expected shapes, "
                     f"{info['check']['values']:,} values read, all finite")
    return "\n".join(lines)


def info(
    cache: Path = typer.Argument(..., help="Feature cache (.h5) written by `featvlr extract` or `featvlr demo`."),
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON instead of text."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the shape, count and NaN checks."),
    check: bool = typer.Option(False, "--check", help="Read every value: NaN/inf and wrong shapes, naming the "
                               "split, dataset and first bad row (slow on big caches)."),
) -> None:
    """Show a cache's splits, counts, shapes, dtypes, provenance and size on disk."""
    description = describe_cache(cache, validate=not no_validate, check=check)
    typer.echo(json.dumps(description, indent=2, default=str) if as_json else format_info(description))


def register(app: typer.Typer) -> None:
    """Add `featvlr info` to the app."""
    app.command("info")(info)
