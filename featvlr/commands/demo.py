"""`featvlr demo`: the built-in dataset, end to end."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("."), "--out", "-o", help="Folder under which features/ (data and "
                                 "caches, the paths configs/demo_*.yaml name) and runs/demo_vse are written."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs [default: the demo config's]."),
        seed: int = typer.Option(0, "--seed", help="Seed of the dataset and the training run."),
        overrides: Optional[List[str]] = typer.Option(
            None, "--set", "-s", help="Override a value of configs/demo_vse.yaml (repeatable)."),
        data_only: bool = typer.Option(False, "--data-only", help="Only generate and extract the dataset."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars (plain lines when the "
                                      "output is not a terminal)."),
    ) -> None:
        """Generate the built-in dataset, extract it with the default text encoder, train `vse`
        briefly and evaluate its six cross-modal scenarios. No download; a few minutes on 2 CPU cores.

        The caches land where configs/demo_*.yaml look for them, so `featvlr train --config
        configs/demo_hrem.yaml` (or demo_mlcl.yaml, a composed method) reuses them afterwards."""
        from featvlr.app.demo import build_demo_caches, demo_config, run_demo

        demo_config(out, epochs=epochs, seed=seed, overrides=list(overrides or []), progress=progress)
        if data_only:
            paths = build_demo_caches(out / "features", seed=seed, data_dir=out / "features" / "demo_data",
                                      say=typer.echo, progress=progress)
            for key, value in paths.items():
                typer.echo(f"{key}: {value}")
            return
        done = run_demo(out, epochs=epochs, seed=seed, overrides=list(overrides or []), say=typer.echo,
                        progress=progress)
        from featvlr.evaluation.results import format_results

        result = done["result"]
        if result.test_metrics:
            typer.echo(format_results(result.test_metrics, run=done["run_dir"]))
        typer.echo(f"run folder:   {done['run_dir']}")
        typer.echo(f"results JSON: {done['run_dir'] / 'eval' / 'test.json'}")
        typer.echo(f"plots:        {done['run_dir'] / 'eval'}/*.png")
