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
        log_to: Optional[List[str]] = typer.Option(
            None, "--log-to", help="Also log to: tensorboard (every numeric field of each step and epoch "
                                   "record, learning rate included, under <run>/tensorboard; needs the "
                                   "tensorboard extra). log.jsonl is always written. Repeatable or a comma list."),
        progress: Optional[bool] = typer.Option(
            None, "--progress/--no-progress", help="Progress bar per epoch (plain lines when the output is not a "
                                                   "terminal) [default: the config's train.progress]."),
    ) -> None:
        """Train a method on a feature cache; evaluate on dev each epoch and the best checkpoint on test.

        The run folder gets config.yaml (resolved), ckpt/last.pt, ckpt/best.pt, log.jsonl and
        eval/<test split>.json with plots; the test table is printed at the end. Multi-GPU:
        torchrun --nproc_per_node N -m featvlr.cli train ...
        """
        from featvlr.app.train_files import train_from_files

        sets = list(overrides or [])
        for target in [t.strip() for value in log_to or [] for t in value.split(",") if t.strip()]:
            if target == "tensorboard":
                from featvlr.core.runlog import check_tensorboard

                check_tensorboard("--log-to tensorboard")
                sets.append("train.tensorboard=true")
            elif target != "jsonl":
                from featvlr.core.errors import ConfigError

                raise ConfigError(f"--log-to: expected tensorboard or jsonl, got {target!r}")
        if progress is not None:
            sets.append(f"train.progress={str(progress).lower()}")
        result = train_from_files(config, sets, out, resume=resume)
        from featvlr.core import distributed

        if distributed.is_main():
            from featvlr.evaluation.results import format_results

            if result.best_epoch >= 0:
                typer.echo(f"best epoch: {result.best_epoch} (ckpt/best.pt)")
            record = result.test_metrics
            if record and not record.get("metrics"):
                _end_without_ground_truth(result.run_dir, record)
            elif record:
                typer.echo(format_results(record, run=result.run_dir))
                typer.echo(f"results: {record.get('json')}")
            else:
                typer.echo(f"run folder: {result.run_dir} (no test split evaluated)")


def _end_without_ground_truth(run_dir: Path, record: dict) -> None:
    """A test split without ground truth (CIRR test1): the selection split's table with the
    best checkpoint, then where the test-server files are and how to score them."""
    from featvlr.app.evaluate import run_eval, submission_guide
    from featvlr.evaluation.results import format_results

    config = record.get("config") or {}
    select = (config.get("train") or {}).get("select_split") or "dev"
    test = (record.get("protocol") or {}).get("split") or (config.get("data") or {}).get("test_split")
    cache = (config.get("data") or {}).get("cache")
    selection = run_eval(run_dir, split=select, print_table=False)
    typer.echo(format_results(selection, run=run_dir))
    typer.echo(f"results: {selection['json']}")
    files = sorted(str(p) for p in (run_dir / "eval" / "submission").glob(f"*_{test}.json"))
    if files:
        for line in submission_guide(files, test, cache):
            typer.echo(line)
    else:
        typer.echo(f"split {test} has no ground truth (no metrics); its record: {record.get('json')}")
