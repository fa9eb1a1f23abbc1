"""`featvlr tune` and `featvlr compare`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from featvlr.commands.ablate import parse_seeds


def retrain_command(config: Path, overrides: list[str], best: dict, out: Path) -> str:
    """The ``featvlr train`` command that retrains the best trial's values, as a shell runs it:
    the tuning's ``--set`` values, then the trial's, into a fresh ``<out>/retrain_trial_NNNN``
    (and evaluated on test, which the trials never were)."""
    import shlex

    from featvlr.tuning.space import format_value

    args = ["featvlr", "train", "--config", str(config)]
    for text in overrides:
        args += ["--set", text]
    for key, value in best["params"].items():
        args += ["--set", f"{key}={format_value(value)}"]
    args += ["--out", str(out / f"retrain_trial_{best['number']:04d}")]
    return shlex.join(args)


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Base YAML config."),
        space: Optional[List[str]] = typer.Option(
            None, "--space", help="KEY=SPEC searched key (repeatable): train.lr=log:1e-4:3e-3, loss.margin=0.1:0.4, "
                                  "loss.n_dim=int:64:512, loss.kind=choice:hinge,infonce [default: the config's "
                                  "tune.space]."),
        trials: int = typer.Option(20, "--trials", "-n", help="Trials this command adds to the study."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Tuning folder [default: runs/tune_<config>]."),
        overrides: Optional[List[str]] = typer.Option(None, "--set", "-s",
                                                      help="Override for every trial (repeatable)."),
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Optuna RDB URL of the study, e.g. postgresql://user@host/db for workers on "
                                    "several machines [default: sqlite in the tuning folder]."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name [default: the tuning folder's name]."),
        seed: int = typer.Option(0, "--seed", help="Seed of the TPE sampler (of the worker that creates the study)."),
        pruner: str = typer.Option("median", "--pruner",
                                   help="median, halving or none (on the dev metric, per epoch)."),
        prune_startup: int = typer.Option(4, "--prune-startup", help="Finished trials before the median pruner acts."),
        prune_warmup: int = typer.Option(2, "--prune-warmup", help="First epoch at which a trial may be pruned."),
        heartbeat: float = typer.Option(30, "--heartbeat", help="Seconds between a running trial's heartbeats; a "
                                                               "trial silent for twice this is failed and re-queued."),
        progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars of each trial's epochs."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write the study report at the end."),
    ) -> None:
        """Tune a config's hyper-parameters on the dev split with Optuna (seeded TPE, pruning after each
        epoch); each trial is a run folder. Run it again, or on other machines with --storage, to add trials."""
        from featvlr.tuning.tune import run_tune

        out = out or Path("runs") / f"tune_{config.stem}"
        result = run_tune(config, list(space or []), out, trials=trials, extra=list(overrides or []),
                          storage=storage, study_name=study, seed=seed, pruner=pruner, prune_startup=prune_startup,
                          prune_warmup=prune_warmup, heartbeat_s=heartbeat, progress=progress, report=report)
        best = result["best"]
        typer.echo(", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items())) + " trials in the study")
        if best is None:
            typer.echo("no complete trial yet")
            return
        typer.echo(f"best trial {best['number']}: {result['metric']} {best['value']:.2f}; run folder {best['run_dir']}")
        typer.echo(f"retrain it: {retrain_command(config, list(overrides or []), best, out)}")
        if "report" in result:
            typer.echo(f"report: {result['report']['html']}")

    @app.command("compare")
    def compare_cmd(
        methods: str = typer.Option(..., "--methods", "-m", help="Comma-separated methods, e.g. vse,hrem,covlr."),
        dataset: str = typer.Option("demo", "--dataset", help="Configs are <config-dir>/<dataset>_<method>.yaml."),
        config_dir: Path = typer.Option(Path("configs"), "--config-dir", help="Folder of the configs."),
        budget: int = typer.Option(12, "--budget", "-n", help="Trials per method (the same for every method)."),
        seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds the best configuration of each is retrained with."),
        out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Folder of the comparison."),
        overrides: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Override for every run (repeatable)."),
        storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL for the studies (one per "
                                                                      "method) [default: sqlite per method]."),
        seed: int = typer.Option(0, "--seed", help="TPE seed."),
        pruner: str = typer.Option("median", "--pruner", help="median, halving or none."),
        untuned: bool = typer.Option(True, "--untuned/--no-untuned", help="Also train each config as it is, over "
                                                                         "the seeds, for the untuned table."),
        progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars of each run's epochs."),
    ) -> None:
        """Equal-budget comparison: tune every method from its own config and search space (tune.space)
        with the same number of dev trials, retrain each best over the seeds, evaluate test once, report."""
        from featvlr.tuning.compare import run_compare

        result = run_compare([m.strip() for m in methods.split(",") if m.strip()], config_dir, dataset, budget,
                             parse_seeds(seeds), out, extra=list(overrides or []), storage=storage, seed=seed,
                             pruner=pruner, untuned=untuned, progress=progress)
        typer.echo(result["headline"])
        typer.echo(f"comparison: {result['markdown']}")
        typer.echo(f"report: {result['report']['html']}")
