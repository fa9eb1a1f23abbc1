"""`featvlr ablate`: a grid of runs over config keys and seeds."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def parse_seeds(text: str) -> list[int]:
    from featvlr.core.errors import ConfigError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("ablate")
    def ablate_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Base YAML config."),
        grid: Optional[List[str]] = typer.Option(
            None, "--grid", "-g", help="key=v1,v2,... : one grid axis (repeatable), e.g. --grid method=vse,hrem."),
        seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
        out: Path = typer.Option(Path("runs/ablation"), "--out", "-o", help="Folder of the ablation."),
        overrides: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Override for every run (repeatable)."),
        jobs: Optional[int] = typer.Option(
            None, "--jobs", "-j", help="Parallel worker processes; 0 or unset: one per GPU, on CPU one per 4 cores "
                                       "(at least 1)."),
        progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars of each run's epochs."),
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Optuna RDB URL of the grid's study, so that workers on several machines share "
                                    "the grid (postgresql://user@host/db) [default: sqlite in the ablation folder]."),
        heartbeat: float = typer.Option(
            30, "--heartbeat", help="Seconds between a running run's heartbeats; a run silent for twice this is "
                                    "taken over by another worker."),
    ) -> None:
        """Train and evaluate the product of a grid and seeds (finished runs are skipped, interrupted
        ones resumed), then write one report: Markdown, CSV, plots and an HTML page. The grid is an
        Optuna grid study: the same command on other machines with --storage shares its runs."""
        from featvlr.tuning.ablate import run_ablation

        result = run_ablation(config, list(grid or []), parse_seeds(seeds), out, jobs=jobs, extra=list(overrides or []),
                              progress=progress, storage=storage, heartbeat_s=heartbeat)
        counts: dict[str, int] = {}
        for r in result["runs"]:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        typer.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
        for r in result["runs"]:
            if r["status"] == "failed":
                typer.echo(f"failed: {r['run_dir']}: {r['error']}")
        rep = result["report"]
        typer.echo(rep["headline"])
        typer.echo(f"report: {rep['html']}")
