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
    ) -> None:
        """Train a method on a feature cache; evaluate on dev each epoch and the best checkpoint on test.

        The run folder gets config.yaml (resolved), ckpt/last.pt, ckpt/best.pt, log.jsonl and
        eval/<test split>.json with plots. Multi-GPU: torchrun --nproc_per_node N -m featvlr.cli train ...
        """
        from featvlr.runs import train_from_files

        result = train_from_files(config, list(overrides or []), out, resume=resume)
        from featvlr import distributed

        if distributed.is_main():
            typer.echo(f"run folder: {result.run_dir}")
            if result.best_epoch >= 0:
                typer.echo(f"best epoch: {result.best_epoch}")
            report = result.run_dir / "eval"
            if report.exists():
                typer.echo(f"test results: {report}")
