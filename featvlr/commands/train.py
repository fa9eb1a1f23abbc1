"""`featvlr train`: train a method from a YAML config."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="YAML config, e.g. configs/f30k_vse.yaml."),
        overrides: Optional[List[str]] = typer.Option(
            None, "--set", "-s", help="Override a config value, e.g. --set train.lr=3e-4 (repeatable)."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Run folder [default: runs/<config name>]."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from ckpt/last.pt."),
        progress: Optional[bool] = typer.Option(
            None, "--progress/--no-progress", help="Progress bar per epoch (plain lines when the output is not a "
                                                   "terminal) [default: the config's train.progress]."),
    ) -> None:
        """Train a method on a feature cache; evaluate on dev each epoch and the best checkpoint on test.

        The run folder gets config.yaml (resolved), ckpt/last.pt, ckpt/best.pt, log.jsonl and
        eval/<test split>.json with plots; the test table is printed at the end. Multi-GPU:
        torchrun --nproc_per_node N -m featvlr.cli train ...
        """
        from featvlr.runs import train_from_files

        sets = list(overrides or [])
        if progress is not None:
            sets.append(f"train.progress={str(progress).lower()}")
        result = train_from_files(config, sets, out, resume=resume)
        from featvlr import distributed

        if distributed.is_main():
            from featvlr.evaluation.results import format_results

            if result.best_epoch >= 0:
                typer.echo(f"best epoch: {result.best_epoch} (ckpt/best.pt)")
            if result.test_metrics:
                typer.echo(format_results(result.test_metrics, run=result.run_dir))
                typer.echo(f"results: {result.test_metrics.get('json')}")
            else:
                typer.echo(f"run folder: {result.run_dir} (no test split evaluated)")
