"""`featvlr embed`: a thin wrapper over :func:`featvlr.inference.export.write_embeddings`."""
from __future__ import annotations

from pathlib import Path

import typer


def embed_command(
    run: Path = typer.Argument(..., help="Run folder or checkpoint (.pt)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .npz file to write."),
    split: str = typer.Option("test", help="Cache split (test/dev/train also find the config's data.*_split)."),
    cache: Path | None = typer.Option(None, help="Feature cache (default: the run's data.cache)."),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:i]."),
) -> None:
    """Write a run's embeddings of a cache split, the file `featvlr eval --embeddings` reads.

    \b
    Cross-modal: images [N, d], texts [T, d], image_ids, captions, txt2img.
    Composed: queries [Q, d], gallery [N, d], image_ids, reference, target, modifiers.
    Example:
      featvlr embed runs/demo_vse --split test --out demo_test.npz
      featvlr eval --embeddings demo_test.npz --cache features/demo.h5 --split test
    """
    from featvlr.inference import load
    from featvlr.inference.export import write_embeddings

    model = load(run, device=device, which=which, cache=cache)
    shapes = write_embeddings(model, out, split)
    typer.echo(", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    typer.echo(f"embeddings: {out}")


def register(app: typer.Typer) -> None:
    """Add ``featvlr embed`` to the app."""
    app.command("embed")(embed_command)
