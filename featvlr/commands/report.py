"""`featvlr report`: compare finished runs, ablations or a tuning study."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    from featvlr.core.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{flag} expects RUN=NAME, got {item!r}")
        out[key] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        runs: Optional[List[Path]] = typer.Argument(
            None, help="Run folders (config.yaml and eval/<split>.json), ablation folders (ablation.yaml) or one "
                       "tuning folder (tune.yaml: the study's report) [default: runs/ablation]."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Folder for report.md/.csv/.html and plots [default: <ablation>/report for "
                                      "one ablation folder, else report]."),
        baseline: Optional[str] = typer.Option(
            None, "--baseline", help="The variant the others are tested against: a label, a run folder or a grid "
                                     "cell (method=vse) [default: the ablation's first cell, else the first run]."),
        label: Optional[List[str]] = typer.Option(
            None, "--label", help="RUN=NAME: call the variant of this run folder (or label) NAME (repeatable)."),
        group_by: Optional[str] = typer.Option(
            None, "--group-by", help="Group runs by this config key alone, e.g. --group-by method."),
        vs: Optional[List[str]] = typer.Option(
            None, "--vs", help="Also plot the metrics against this config key (repeatable); an ablation's grid "
                               "keys are plotted anyway."),
        storage: Optional[str] = typer.Option(
            None, "--storage", help="For a tuning folder: the study's Optuna RDB URL [default: the one tune.yaml "
                                    "records]."),
    ) -> None:
        """Compare finished runs: a headline table (mean ± std over seeds, best per column, training
        time, paired p-value of rsum against a baseline), the queries where the best variant wins and
        loses, plots against the grid keys and every metric; Markdown, CSV and an HTML page."""
        from featvlr.core.errors import InputError
        from featvlr.report import select_runs, write_report

        paths = list(runs or [])
        if len(paths) == 1 and (paths[0] / "tune.yaml").exists():
            from featvlr.tuning.study_report import write_study_report

            rep = write_study_report(paths[0], out, storage=storage)
            typer.echo(rep["headline"])
            typer.echo(f"report: {rep['html']}")
            return
        if not paths:
            default = Path("runs/ablation")
            if not (default / "ablation.yaml").exists():
                raise InputError(default, "no ablation here; give run folders or an ablation folder")
            paths = [default]
        chosen = select_runs(paths)
        if out is None:
            single = len(paths) == 1 and (paths[0] / "ablation.yaml").exists()
            out = paths[0] / "report" if single else Path("report")
        for skipped in chosen.skipped:
            typer.echo(f"not finished, left out: {skipped}")
        if baseline is None and chosen.baseline_run is not None and chosen.baseline_run in chosen.run_dirs:
            baseline = str(chosen.baseline_run)
        rep = write_report(chosen.run_dirs, out, baseline=baseline, grid_keys=chosen.grid_keys, vs=list(vs or []),
                           group_by=group_by, labels=_pairs(list(label or []), "--label"))
        typer.echo(rep["headline"])
        typer.echo(f"report: {rep['html']}")
