"""The trainer: one loop for every method, which it knows only through the Method contract.

One process (CUDA when present, else CPU)::

    featvlr train --config configs/f30k_vse.yaml --set train.lr=3e-4 --out runs/f30k_vse

Several GPUs (or several CPU processes with gloo) on one machine::

    torchrun --nproc_per_node 2 -m featvlr.cli train --config configs/f30k_vse.yaml

Each epoch: batches from :mod:`featvlr.data` (one item = one global batch, this rank's
share), ``method(batch, state)`` returns named losses, the ``*_loss`` keys are summed and
back-propagated (AMP on CUDA), gradients clipped, AdamW and the schedule step; then the
dev split is evaluated, ``ckpt/last.pt`` is written atomically and ``ckpt/best.pt`` when
the selection metric improves. ``--resume`` restores model, optimiser, scheduler, scaler,
epoch and RNG state. A NaN or inf loss stops the run and keeps the last good checkpoint;
when the batch's own inputs are not finite, the error names the cache rows instead.
At the end the best checkpoint is evaluated on the test split (``eval/test.json``).

The loop reads top to bottom in named stages: :func:`check_run_folder`, the method's
prerequisite runs (:func:`run_stage`), :func:`setup` (the resolved config, the method and its
optimiser), :func:`restore` (``--resume``), :func:`run_epoch` (one pass over the
batches, :func:`train_step` each), :func:`end_of_epoch` (dev evaluation, checkpoints, the log
line) and :func:`final_test`. A :class:`RunState` carries what they share.

Ctrl-C or SIGTERM abandons the current step (a second one stops at once), says which epoch
is safely saved and prints the ``--resume`` command (exit status 130 or 143); a new run
stopped before its first checkpoint removes what it wrote. Under DDP every rank stops at
the same step, and an error on any rank ends every rank promptly with that error
(:class:`featvlr.core.distributed.FailureWatch`).
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from featvlr.config import Config
from featvlr.core import distributed as dist_utils
from featvlr.core.checkpoint import load_checkpoint, save_checkpoint
from featvlr.core.device import pick_device
from featvlr.core.errors import ConfigError, FeatvlrError, InputError, Interrupted
from featvlr.core.flatten import flatten_numbers
from featvlr.core.interrupts import Signalled, StopSignals, interrupted, signal_of
from featvlr.methods.base import Stage, StepState
from featvlr.methods.registry import get_method
from featvlr.training.guard import nonfinite_inputs, remove_fresh_run, resume_command, saved_state
from featvlr.training.notes import geometry_note, inactive_terms, run_warnings
from featvlr.training.run_eval import dev_metrics, write_eval
from featvlr.training.setup import (
    RunState,
    check_run_folder,
    epoch_seed,
    feature_dims,
    lr_factor,
    open_log,
    restore,
    seed_everything,
    setup,
    wrap_model,
)


class TrainingDiverged(FeatvlrError):
    """The loss became NaN or inf."""


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    test_metrics: dict[str, Any] = field(default_factory=dict)
    epochs_run: int = 0
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)


EpochHook = Callable[[int, dict[str, Any]], "bool | None"]
"""Called on the main rank after each epoch's dev evaluation and checkpoint with the epoch
number (1-based) and that epoch's log record (train losses, ``{select split}/{metric}`` values).
Returning True ends training after this epoch: the checkpoints are kept and the final test
evaluation is skipped (``TrainResult.stopped_early``). An exception raised by the hook ends
the run as any error does. Used by tuning to report intermediate values and prune."""


def run_stage(stage: Stage) -> None:
    """Train a method's prerequisite run, resume it when interrupted, reuse it when complete."""
    last = Path(stage.run_dir) / "ckpt" / "last.pt"
    if not last.exists():
        train(stage.config, stage.run_dir)
    elif int(load_checkpoint(last)["epoch"]) < stage.config.train.epochs:
        train(stage.config, stage.run_dir, resume=True)


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False,
          on_epoch_end: EpochHook | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` and evaluate its best checkpoint on the test split.

    ``on_epoch_end`` (see :data:`EpochHook`) sees every epoch's record and may stop the run.

    Raises :class:`~featvlr.core.errors.Interrupted` on SIGINT/SIGTERM (see the module docstring).
    """
    run_dir = Path(run_dir)
    existed = run_dir.exists()
    device = pick_device(cfg.train.device)
    with dist_utils.process_group(device.type):
        watch = dist_utils.FailureWatch(on_failure=lambda: dist_utils.is_main() and not resume
                                        and remove_fresh_run(run_dir, existed)).start()
        try:
            with StopSignals("flag") as stop:
                try:
                    result = _train(cfg, run_dir, device, resume=resume, stop=stop, on_epoch_end=on_epoch_end)
                except KeyboardInterrupt as exc:
                    raise _interrupted(exc, run_dir, existed, resume, stop) from None
            dist_utils.barrier()
        except Interrupted:
            raise
        except BaseException as exc:
            watch.fail(exc)
            if dist_utils.is_main() and not resume:
                remove_fresh_run(run_dir, existed)
            raise
        finally:
            watch.stop()
    return result


def _interrupted(exc: KeyboardInterrupt, run_dir: Path, existed: bool, resume: bool, stop: StopSignals
                 ) -> Interrupted:
    """The error a stopped run ends with: which epoch is safe and the ``--resume`` command."""
    if dist_utils.is_main() and not resume:
        remove_fresh_run(run_dir, existed)
    epoch, saved = saved_state(run_dir)
    doing = f"stopped in epoch {getattr(stop, 'epoch', epoch + 1)}; "
    message = (f"{doing}{saved}; continue with: {resume_command(run_dir, dist_utils.world_size())}"
               if epoch else f"{doing}{saved} and the run folder was cleaned up; run the same "
               "command again to start over")
    return interrupted(signal_of(exc), message, say=dist_utils.is_main())


def _agreed(flag: bool, distributed: bool, device: torch.device) -> bool:
    """``flag`` or any other rank's (a collective: every rank calls it at the same point)."""
    if not distributed:
        return flag
    value = torch.tensor(int(flag), dtype=torch.int32, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value)


def _train(cfg: Config, run_dir: Path, device: torch.device, *, resume: bool, stop: StopSignals,
           on_epoch_end: EpochHook | None = None) -> TrainResult:
    """The run, stage by stage (see the module docstring)."""
    check_run_folder(cfg, run_dir, resume=resume)
    for stage in get_method(cfg.method).stages(cfg, run_dir):
        run_stage(stage)
    run, ckpt = setup(cfg, run_dir, device, resume=resume)
    if ckpt is not None:
        restore(run, ckpt)
    wrap_model(run)
    open_log(run, resume)
    from featvlr.data import BatchStream

    stream = BatchStream(run.batches, run.device, prefetch=run.cfg.data.prefetch)
    stopped_early, epoch = False, run.start_epoch
    for epoch in range(run.start_epoch, run.cfg.train.epochs):
        stop.epoch = epoch + 1
        record = run_epoch(run, epoch, stream, stop)
        end_of_epoch(run, epoch, record, stream.wait_s)
        wants_stop = bool(run.is_main and on_epoch_end is not None and on_epoch_end(epoch + 1, record))
        if _agreed(stop.signum is not None, run.distributed, run.device):  # also every rank's end-of-epoch barrier
            raise Signalled(stop.signum or signal.SIGINT)
        if _agreed(wants_stop, run.distributed, run.device):
            stopped_early = True
            break
    return final_test(run, epoch + 1 if stopped_early else run.cfg.train.epochs, stopped_early=stopped_early)


def run_epoch(run: RunState, epoch: int, stream: Any, stop: StopSignals) -> dict[str, Any]:
    """One pass over the epoch's batches; returns the epoch's log record (mean of every scalar)."""
    tr = run.cfg.train
    run.method.train()
    seed_everything(epoch_seed(tr.seed, run.rank, epoch))
    # One draw from the global generator per epoch, where featvlr's earlier DataLoader drew
    # its worker base seed: dropout masks, and so every seed's results, stay as they were.
    torch.empty((), dtype=torch.int64).random_()
    run.batches.set_epoch(epoch)
    bar = run.logger.progress(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{tr.epochs}",
                              enabled=run.is_main and tr.progress)
    t0, items, sums = time.perf_counter(), 0, {}
    for b, batch in enumerate(stream):
        values = train_step(run, batch, epoch, stop)
        items += tr.batch_size
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
            if k.endswith(("_loss", "_on")):
                run.active[k] = run.active.get(k, False) or v != 0.0
        rate = items / max(1e-9, time.perf_counter() - t0)
        bar.update(1, loss=values["loss"], items_s=rate)
        if run.is_main and (run.step % tr.log_every == 0 or b == run.steps_per_epoch - 1):
            run.logger.log({"event": "step", "epoch": epoch + 1, "step": run.step,
                            "lr": run.optimizer.param_groups[0]["lr"], "items_per_s": rate, **values})
    bar.close()
    epoch_time = time.perf_counter() - t0
    return {"event": "epoch", "epoch": epoch + 1, "step": run.step, "time_s": epoch_time,
            "data_wait_s": stream.wait_s, "step_s": epoch_time - stream.wait_s,
            "items_per_s": items / max(1e-9, epoch_time),
            **{f"train_{k}": v / max(1, run.steps_per_epoch) for k, v in sums.items()}}


def train_step(run: RunState, batch: dict[str, Any], epoch: int, stop: StopSignals) -> dict[str, float]:
    """Forward (AMP on CUDA), the finite-loss and stop checks every rank agrees on, backward,
    clipping, optimiser and schedule step. Returns the step's scalars (``loss`` their sum)."""
    cfg, tr = run.cfg, run.cfg.train
    state = StepState(epoch=epoch, step=run.step, steps_per_epoch=run.steps_per_epoch, world_size=run.world)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        out = run.model(batch, state)
    losses = {k: v for k, v in out.items() if k.endswith("_loss")}
    if not losses:
        raise FeatvlrError(f"method {cfg.method!r} returned no '*_loss' key from training_step")
    total = sum(losses.values())
    finite, stopping = _finite_and_stopping(run, total, stop)
    if not finite:
        raise _diverged(run, batch, losses, total, epoch)
    if stopping:  # abandon this step; the last checkpoint is the state to resume
        raise Signalled(stop.signum or signal.SIGINT)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if tr.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.method.parameters(), tr.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.step += 1
    values = {k: float(v.detach()) for k, v in out.items() if v.numel() == 1}
    values["loss"] = float(total.detach())
    return values


def _finite_and_stopping(run: RunState, total: torch.Tensor, stop: StopSignals) -> tuple[bool, bool]:
    """Whether the loss is finite on every rank, and whether any rank was signalled to stop
    (under DDP every rank stops together, never one alone inside a collective)."""
    finite = torch.isfinite(total.detach()).to(torch.int32)
    if not run.distributed:
        return bool(finite), stop.signum is not None
    flags = torch.stack([finite, finite.new_tensor(int(stop.signum is None))])
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    return bool(flags[0]), not bool(flags[1])


def _diverged(run: RunState, batch: dict[str, Any], losses: dict[str, torch.Tensor], total: torch.Tensor,
              epoch: int) -> FeatvlrError:
    """The error of a NaN or inf loss: the cache's rows when the inputs are not finite, else divergence."""
    cfg = run.cfg
    where = run.run_dir / "ckpt" / "last.pt"
    kept = f"the last good checkpoint is {where}" if where.exists() else "no checkpoint was written yet"
    problem = nonfinite_inputs(batch, cfg.data.train_split)
    if problem:  # the cache, not the optimisation
        return InputError(cfg.data.cache, f"the training inputs hold NaN or inf values: {problem} (the "
                          f"loss became {total.item()} at epoch {epoch + 1}, step {run.step}); `featvlr info "
                          f"--check {cfg.data.cache}` finds every bad row; {kept}")
    return TrainingDiverged(
        f"loss is {total.item()} at epoch {epoch + 1}, step {run.step} "
        f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); {kept}. "
        "Try a lower train.lr or train.amp=false.")


def end_of_epoch(run: RunState, epoch: int, record: dict[str, Any], wait_s: float) -> None:
    """Main rank: evaluate the selection split when due, keep ``best.pt`` when the selection
    metric improves, write ``last.pt``, log the record and print the epoch line."""
    if not run.is_main:
        return
    cfg, tr = run.cfg, run.cfg.train
    select_key, metrics = tr.select_metric, {}
    if tr.eval_every and ((epoch + 1) % tr.eval_every == 0 or epoch + 1 == tr.epochs):
        dev = run.task.eval_split(run.store, run.select_split)
        metrics = dev_metrics(run.method, run.task, dev, cfg, run.device)
        if select_key not in metrics:
            raise ConfigError(f"train.select_metric={select_key!r} is not among the evaluation's "
                              f"metrics ({', '.join(sorted(metrics))})")
        record.update({f"{run.select_split}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        if metrics[select_key] > run.best_value:
            run.best_value, run.best_epoch, run.best_metrics = float(metrics[select_key]), epoch + 1, metrics
            save_checkpoint(run.run_dir / "ckpt" / "best.pt", run.checkpoint_payload(epoch + 1))
    save_checkpoint(run.run_dir / "ckpt" / "last.pt", run.checkpoint_payload(epoch + 1))
    run.logger.log(record)
    run.logger.echo(f"epoch {epoch + 1}: loss {record.get('train_loss', float('nan')):.4f}"
                    + (f", {run.select_split} {select_key} {metrics[select_key]:.2f}" if metrics else "")
                    + geometry_note(metrics)
                    + f" ({record['items_per_s']:.0f} items/s, waited {wait_s:.1f} s"
                    f" of {record['time_s']:.1f} s for data)")


def final_test(run: RunState, epochs_done: int, *, stopped_early: bool) -> TrainResult:
    """The run's warnings; then, unless the epoch hook stopped it, the best checkpoint on the
    test split (``eval/<test split>.json``, :func:`~featvlr.training.run_eval.write_eval`)."""
    cfg, logger = run.cfg, run.logger
    result = TrainResult(run_dir=run.run_dir, best_metrics=run.best_metrics, best_epoch=run.best_epoch,
                         epochs_run=epochs_done - run.start_epoch, stopped_early=stopped_early,
                         warnings=run_warnings(run.active, run.best_metrics, run.select_split, run.step))
    if run.is_main:
        for message in result.warnings:
            logger.log({"event": "warning", "message": message})
            logger.echo(f"warning: {message}")
    if run.is_main and stopped_early:
        logger.log({"event": "stopped_early", "epoch": epochs_done})
        logger.echo(f"stopped after epoch {epochs_done} by the epoch hook; no test evaluation")
    elif run.is_main:
        best_path = run.run_dir / "ckpt" / "best.pt"
        if not best_path.exists():
            save_checkpoint(best_path, run.checkpoint_payload(cfg.train.epochs))
        run.method.load_state_dict(load_checkpoint(best_path)["model"])
        if cfg.data.test_split and run.task.has_split(run.store, cfg.data.test_split):
            test = run.task.eval_split(run.store, cfg.data.test_split)
            result.test_metrics = write_eval(run.method, run.task, test, cfg, run.device,
                                             run.run_dir / "eval" / f"{cfg.data.test_split}.json",
                                             checkpoint=best_path, warnings=inactive_terms(run.active, run.step))
            logger.log({"event": "test", **flatten_numbers(result.test_metrics, sep="/", scalars_only=True)})
    logger.close()
    return result


__all__ = ["EpochHook", "RunState", "TrainResult", "TrainingDiverged", "end_of_epoch", "feature_dims",
           "final_test", "lr_factor", "restore", "run_epoch", "run_stage", "seed_everything", "setup", "train",
           "train_step"]
