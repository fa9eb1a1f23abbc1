"""`featvlr search`: a thin wrapper over :meth:`featvlr.inference.RetrievalModel.search`."""
from __future__ import annotations

import json
from pathlib import Path

import typer


def format_record(record: dict) -> str:
    """The human-readable form of a search record (:mod:`featvlr.inference.records`)."""
    q = record["query"]
    head = {"text": lambda: f"text: {q['text']!r}",
            "image": lambda: f"image {q['image_id']} (row {q['row']})",
            "composed": lambda: f"reference {q['reference_id']} + {q['modifier']!r}"}[q["type"]]()
    lines = [f"{record['method']} on {record['split']} ({record['backend']}): {head}"]
    for scenario, hits in record["results"].items():
        lines.append(f"{scenario}:")
        for h in hits:
            if "text" in h:
                lines.append(f"  {h['rank']:>3}  {h['score']:+.4f}  {h['text']}  [image {h['image_id']}]")
            else:
                caption = f"  {h['captions'][0]}" if h.get("captions") else ""
                lines.append(f"  {h['rank']:>3}  {h['score']:+.4f}  {h['image_id']}{caption}")
        if not hits:
            lines.append("  (nothing)")
    return "\n".join(lines)


def search_command(
    run: Path = typer.Argument(..., help="Run folder or checkpoint (.pt)."),
    text: str | None = typer.Argument(None, help="A text query (text to image).", show_default=False),
    image: str | None = typer.Option(None, "--image", help="An image id of the split: image to text and "
                                     "image to image."),
    reference: str | None = typer.Option(None, "--reference", help="Composed methods: the reference image id."),
    modifier: str | None = typer.Option(None, "--modifier", help="Composed methods: what to change."),
    split: str = typer.Option("test", help="Gallery split (test/dev/train also find the config's data.*_split)."),
    k: int = typer.Option(10, "--k", help="Results per scenario."),
    backend: str = typer.Option("exact", help="exact (the evaluation's ranking), or faiss-flat / faiss-ivf / "
                                "faiss-hnsw (embedding methods)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON record (keys documented in "
                                 "featvlr.inference.records)."),
    cache: Path | None = typer.Option(None, help="Feature cache (default: the run's data.cache)."),
    text_model: Path | None = typer.Option(None, help="Text encoder folder (default: the one the cache records)."),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:i]."),
) -> None:
    """Search a cache split with a trained run: text to images, an image to texts and images,
    or a composed query. The gallery index is built once per run and split (<run>/index/).

    \b
    Examples:
      featvlr search runs/demo_vse "a dog running on the beach" --k 5
      featvlr search runs/demo_vse --image test12 --json
      featvlr search runs/demo_mlcl --reference test1-img3 --modifier "make it red"
    """
    from featvlr.inference import load

    model = load(run, device=device, which=which, cache=cache, text_model=text_model)
    record = model.search(text, image=image, reference=reference, modifier=modifier, split=split, k=k,
                          backend=backend)
    typer.echo(json.dumps(record, indent=2, ensure_ascii=False) if as_json else format_record(record))


def register(app: typer.Typer) -> None:
    """Add ``featvlr search`` to the app."""
    app.command("search")(search_command)
