"""`featvlr ablate` and `featvlr report`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _ints(text: str) -> list[int]:
    from featvlr.errors import ConfigError

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
            None, "--jobs", "-j", help="Parallel worker processes [default: one per GPU; on CPU one per 4 cores]."),
    ) -> None:
        """Train and evaluate the product of a grid and seeds (finished runs are skipped, interrupted
        ones resumed), then write one report: Markdown, CSV, plots and an HTML page."""
        from featvlr.ablate import run_ablation

        result = run_ablation(config, list(grid or []), _ints(seeds), out, jobs=jobs, extra=list(overrides or []))
        counts: dict[str, int] = {}
        for r in result["runs"]:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        typer.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
        rep = result["report"]
        typer.echo(Path(rep["markdown"]).read_text(encoding="utf-8"))
        typer.echo(f"report: {rep['html']}")

    @app.command("report")
    def report_cmd(
        runs: List[Path] = typer.Argument(..., help="Run folders (each with config.yaml and eval/<split>.json)."),
        out: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for report.md/.csv/.html and plots."),
        baseline: Optional[str] = typer.Option(None, "--baseline", help="Variant name to test the others against."),
    ) -> None:
        """Compare finished runs: mean ± std over seeds per variant, best per column, paired
        significance of rsum against a baseline, plots and an HTML page."""
        from featvlr.report import write_report

        rep = write_report(list(runs), out, baseline=baseline)
        typer.echo(Path(rep["markdown"]).read_text(encoding="utf-8"))
        typer.echo(f"report: {rep['html']}")
