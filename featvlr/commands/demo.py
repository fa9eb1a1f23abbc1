"""`featvlr demo`: the built-in dataset, end to end."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the data, caches and run."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs [default: the demo config's]."),
        seed: int = typer.Option(0, "--seed", help="Seed of the dataset and the training run."),
        overrides: Optional[List[str]] = typer.Option(
            None, "--set", "-s", help="Override a value of configs/demo_vse.yaml (repeatable)."),
        data_only: bool = typer.Option(False, "--data-only", help="Only generate and extract the dataset."),
    ) -> None:
        """Generate the built-in dataset, extract it with the default text encoder, train `vse`
        briefly and evaluate every scenario. No download; a few minutes on 2 CPU cores."""
        from featvlr.demo_run import build_demo_caches, run_demo

        if data_only:
            paths = build_demo_caches(out / "features", seed=seed, data_dir=out / "data")
            for key, value in paths.items():
                typer.echo(f"{key}: {value}")
            return
        done = run_demo(out, epochs=epochs, seed=seed, overrides=list(overrides or []))
        from featvlr.evaluate import format_table

        result = done["result"]
        typer.echo(format_table(result.test_metrics.get("metrics", {})))
        typer.echo(f"run folder:   {done['run_dir']}")
        typer.echo(f"results JSON: {done['run_dir'] / 'eval' / 'test.json'}")
        typer.echo(f"plots:        {done['run_dir'] / 'eval'}/*.png")
