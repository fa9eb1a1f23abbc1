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

Ctrl-C or SIGTERM abandons the current step (a second one stops at once), says which epoch
is safely saved and prints the ``--resume`` command (exit status 130 or 143); a new run
stopped before its first checkpoint removes what it wrote. Under DDP every rank stops at
the same step, and an error on any rank ends every rank promptly with that error
(:class:`featvlr.core.distributed.FailureWatch`).
"""
from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from featvlr.core import distributed as dist_utils
from featvlr.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from featvlr.config import Config, config_to_dict, save_config
from featvlr.core.errors import ConfigError, FeatvlrError, InputError, Interrupted
from featvlr.core.fileio import remove_stale_partials
from featvlr.core.interrupts import Signalled, StopSignals, interrupted, signal_of
from featvlr.methods.base import FeatureDims, Method, Stage, StepState
from featvlr.core.device import pick_device
from featvlr.methods.registry import get_method
from featvlr.inference.loading import load_method
from featvlr.config.provenance import check_run_config, config_hash
from featvlr.core.flatten import flatten_numbers
from featvlr.training.run_eval import dev_metrics, write_eval
from featvlr.training.notes import geometry_note, inactive_terms, run_warnings
from featvlr.core.runlog import RunLogger
from featvlr.cache.store import StoreSplit, open_store
from featvlr.tasks import get_task
from featvlr.training.guard import (check_resumable, check_state_dict, nonfinite_inputs, remove_fresh_run,
                                 resume_command, saved_state)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def lr_factor(step: int, *, schedule: str, warmup_steps: int, steps_per_epoch: int, total_steps: int,
              lr_steps: list[int], lr_gamma: float) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up, then step/cosine/constant."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        factor *= lr_gamma ** sum(epoch >= m for m in lr_steps)
    elif schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0, step - warmup_steps) / span)
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule != "constant":
        raise ConfigError(f"train.schedule: unknown schedule {schedule!r} (step, cosine, constant)")
    return factor


def feature_dims(split: StoreSplit) -> FeatureDims:
    dims = FeatureDims()
    if split.has_regions:
        dims.region_dim, dims.n_regions = split.region_dim, split.n_regions
    if split.n_texts:
        dims.text_dim = split.text_dim
    if split.has(f"images/{split.name}/global"):
        dims.global_dim = int(split.store.dataset(f"images/{split.name}/global").shape[-1])
    return dims


def _select_split(cfg: Config) -> str:
    split = cfg.train.select_split
    if split == cfg.data.test_split and not cfg.train.allow_test_selection:
        raise ConfigError(
            f"train.select_split={split!r} chooses best.pt on the test split; set "
            "train.allow_test_selection=true to do that knowingly (the papers' honest protocol selects on dev)")
    return split


def _placement(cfg: Config, split: StoreSplit, device: torch.device) -> str:
    """Where the training rows live (:func:`featvlr.data.rows.choose_placement`)."""
    from featvlr.data.rows import choose_placement, dataset_bytes

    size = dataset_bytes(split, [split.k_regions, split.k_tokens, split.k_pooled, split.k_global])
    return choose_placement(size, device, in_memory=cfg.data.in_memory, on_device=cfg.data.on_device)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of (run seed, rank, epoch): every epoch starts from a known RNG state, so a resumed
    run (on any number of ranks) draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


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
    owns_group = not dist_utils.is_distributed()
    distributed = dist_utils.init_from_env(pick_device(cfg.train.device).type)
    watch = dist_utils.FailureWatch(on_failure=lambda: dist_utils.is_main() and not resume
                                    and remove_fresh_run(run_dir, existed)).start()
    try:
        with StopSignals("flag") as stop:
            try:
                result = _train(cfg, run_dir, resume=resume, stop=stop, on_epoch_end=on_epoch_end)
            except KeyboardInterrupt as exc:
                if dist_utils.is_main() and not resume:
                    remove_fresh_run(run_dir, existed)
                epoch, saved = saved_state(run_dir)
                doing = f"stopped in epoch {getattr(stop, 'epoch', epoch + 1)}; "
                message = (f"{doing}{saved}; continue with: {resume_command(run_dir, dist_utils.world_size())}"
                           if epoch else f"{doing}{saved} and the run folder was cleaned up; run the same "
                           "command again to start over")
                raise interrupted(signal_of(exc), message, say=dist_utils.is_main()) from None
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
    if distributed and owns_group:
        torch.distributed.destroy_process_group()
    return result


def _agreed(flag: bool, distributed: bool, device: torch.device) -> bool:
    """``flag`` or any other rank's (a collective: every rank calls it at the same point)."""
    if not distributed:
        return flag
    value = torch.tensor(int(flag), dtype=torch.int32, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value)


def _train(cfg: Config, run_dir: Path, *, resume: bool, stop: StopSignals,
           on_epoch_end: EpochHook | None = None) -> TrainResult:
    method_cls = get_method(cfg.method)
    device = pick_device(cfg.train.device)
    distributed = dist_utils.is_distributed()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    is_main = rank == 0
    select_split = _select_split(cfg)

    if (run_dir / "ckpt" / "last.pt").exists() and not resume:
        raise InputError(run_dir, "the run folder has a checkpoint already; pass --resume to continue it or "
                         "choose another --out")
    if is_main:  # temporary files of a run killed while writing (SIGKILL): nothing else removes them
        for folder in (run_dir, run_dir / "ckpt", run_dir / "eval"):
            remove_stale_partials(folder)
    for stage in method_cls.stages(cfg, run_dir):
        run_stage(stage)
    cfg = method_cls.prepare(cfg, run_dir, load_method)
    ckpt = None
    if resume:
        last = run_dir / "ckpt" / "last.pt"
        if not last.exists():
            raise InputError(run_dir, "--resume: the run folder has no ckpt/last.pt")
        ckpt = load_checkpoint(last)
        check_resumable(ckpt, cfg, last)
    changed = check_run_config(run_dir, cfg, resume=resume, done_epochs=None if ckpt is None else int(ckpt["epoch"]))
    seed_everything(cfg.train.seed + rank)

    store = open_store(cfg.data.cache)
    train_split = store.split(cfg.data.train_split)
    task = get_task(method_cls.task)
    task.check_splits(store, cfg, select_split)
    placement = _placement(cfg, train_split, device)
    dims = feature_dims(train_split)
    method = method_cls(cfg.model, cfg.loss, dims)
    method.attach_runs(load_method)
    method = method.to(device)
    batches = task.build_batches(cfg, train_split, rank=rank, world=world, placement=placement, device=device)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * cfg.train.epochs

    optimizer = torch.optim.AdamW(method.optimizer_groups(cfg.train.lr, cfg.train.weight_decay,
                                                          decay_all=cfg.train.decay_all_parameters),
                                  lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    tr = cfg.train
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, schedule=tr.schedule, warmup_steps=tr.warmup_steps, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, lr_steps=tr.lr_steps, lr_gamma=tr.lr_gamma))
    use_amp = tr.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, step, best_value, best_epoch, best_metrics = 0, 0, -math.inf, -1, {}
    active: dict[str, bool] = {}  # per loss term (and "*_on" switch): non-zero at some step of this run
    if ckpt is not None:
        check_state_dict(method, ckpt["model"], run_dir / "ckpt" / "last.pt")
        method.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        best_value = float(ckpt["best_value"])
        best_epoch = int(ckpt["best_epoch"])
        best_metrics = dict(ckpt.get("best_metrics", {}))
        active = {str(k): bool(v) for k, v in dict(ckpt.get("active_terms", {})).items()}
        set_rng_state(ckpt["rng"])

    model: torch.nn.Module = method
    if distributed:
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        **method.ddp_options())
    if tr.compile:
        model = torch.compile(model)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = RunLogger(run_dir, enabled=is_main, tensorboard=tr.tensorboard)
    if is_main and resume:
        logger.log({"event": "resume", "epoch": start_epoch, "step": step,
                    "changed": {k: list(v) for k, v in changed.items()}})
        logger.echo(f"resuming {run_dir} after epoch {start_epoch} (step {step})"
                    + "".join(f"; {k}: {a} -> {b}" for k, (a, b) in changed.items()))
    if is_main and not resume:
        logger.log({"event": "start", "method": cfg.method, "device": str(device), "world_size": world,
                    "data_placement": placement, "prefetch": cfg.data.prefetch,
                    "steps_per_epoch": steps_per_epoch, "parameters": sum(p.numel() for p in method.parameters())})

    def checkpoint_payload(epoch_done: int) -> dict[str, Any]:
        return {
            "method": cfg.method, "config": config_to_dict(cfg), "config_sha256": config_hash(cfg),
            "dims": vars(dims).copy(),
            "model": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch_done, "step": step, "best_value": best_value, "best_epoch": best_epoch,
            "best_metrics": best_metrics, "rng": rng_state(), "active_terms": dict(active),
        }

    from featvlr.data import BatchStream

    stream = BatchStream(batches, device, prefetch=cfg.data.prefetch)
    select_key = tr.select_metric
    stopped_early = False
    for epoch in range(start_epoch, tr.epochs):
        method.train()
        seed_everything(epoch_seed(tr.seed, rank, epoch))
        # One draw from the global generator per epoch, where featvlr's earlier DataLoader drew
        # its worker base seed: dropout masks, and so every seed's results, stay as they were.
        torch.empty((), dtype=torch.int64).random_()
        batches.set_epoch(epoch)
        bar = logger.progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tr.epochs}",
                              enabled=is_main and tr.progress)
        t0, items, sums = time.perf_counter(), 0, {}
        stop.epoch = epoch + 1
        for b, batch in enumerate(stream):
            state = StepState(epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, world_size=world)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = model(batch, state)
            losses = {k: v for k, v in out.items() if k.endswith("_loss")}
            if not losses:
                raise FeatvlrError(f"method {cfg.method!r} returned no '*_loss' key from training_step")
            total = sum(losses.values())
            finite = torch.isfinite(total.detach()).to(torch.int32)
            if distributed:  # stop every rank together, never one alone inside a collective
                flags = torch.stack([finite, finite.new_tensor(int(stop.signum is None))])
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
                finite, stopping = flags[0], not bool(flags[1])
            else:
                stopping = stop.signum is not None
            if not bool(finite):
                where = run_dir / "ckpt" / "last.pt"
                kept = f"the last good checkpoint is {where}" if where.exists() else "no checkpoint was written yet"
                problem = nonfinite_inputs(batch, cfg.data.train_split)
                if problem:  # the cache, not the optimisation
                    raise InputError(cfg.data.cache, f"the training inputs hold NaN or inf values: {problem} (the "
                                     f"loss became {total.item()} at epoch {epoch + 1}, step {step}); `featvlr info "
                                     f"--check {cfg.data.cache}` finds every bad row; {kept}")
                raise TrainingDiverged(
                    f"loss is {total.item()} at epoch {epoch + 1}, step {step} "
                    f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); {kept}. "
                    "Try a lower train.lr or train.amp=false.")
            if stopping:  # abandon this step; the last checkpoint is the state to resume
                raise Signalled(stop.signum or signal.SIGINT)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if tr.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(method.parameters(), tr.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            items += tr.batch_size
            values = {k: float(v.detach()) for k, v in out.items() if v.numel() == 1}
            values["loss"] = float(total.detach())
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                if k.endswith(("_loss", "_on")):
                    active[k] = active.get(k, False) or v != 0.0
            rate = items / max(1e-9, time.perf_counter() - t0)
            bar.update(1, loss=values["loss"], items_s=rate)
            if is_main and (step % tr.log_every == 0 or b == steps_per_epoch - 1):
                logger.log({"event": "step", "epoch": epoch + 1, "step": step,
                            "lr": optimizer.param_groups[0]["lr"], "items_per_s": rate, **values})
        bar.close()
        epoch_time = time.perf_counter() - t0
        record = {"event": "epoch", "epoch": epoch + 1, "step": step, "time_s": epoch_time,
                  "data_wait_s": stream.wait_s, "step_s": epoch_time - stream.wait_s,
                  "items_per_s": items / max(1e-9, epoch_time),
                  **{f"train_{k}": v / max(1, steps_per_epoch) for k, v in sums.items()}}
        if is_main:
            metrics: dict[str, Any] = {}
            if tr.eval_every and ((epoch + 1) % tr.eval_every == 0 or epoch + 1 == tr.epochs):
                dev = task.eval_split(store, select_split)
                metrics = dev_metrics(method, task, dev, cfg, device)
                if select_key not in metrics:
                    raise ConfigError(f"train.select_metric={select_key!r} is not among the evaluation's "
                                      f"metrics ({', '.join(sorted(metrics))})")
                record.update({f"{select_split}/{k}": v for k, v in metrics.items()
                               if isinstance(v, (int, float))})
                if metrics[select_key] > best_value:
                    best_value, best_epoch, best_metrics = float(metrics[select_key]), epoch + 1, metrics
                    save_checkpoint(run_dir / "ckpt" / "best.pt", checkpoint_payload(epoch + 1))
            save_checkpoint(run_dir / "ckpt" / "last.pt", checkpoint_payload(epoch + 1))
            logger.log(record)
            logger.echo(f"epoch {epoch + 1}: loss {record.get('train_loss', float('nan')):.4f}"
                        + (f", {select_split} {select_key} {metrics[select_key]:.2f}" if metrics else "")
                        + geometry_note(metrics)
                        + f" ({record['items_per_s']:.0f} items/s, waited {stream.wait_s:.1f} s"
                        f" of {epoch_time:.1f} s for data)")
        wants_stop = bool(is_main and on_epoch_end is not None and on_epoch_end(epoch + 1, record))
        if _agreed(stop.signum is not None, distributed, device):  # also every rank's end-of-epoch barrier
            raise Signalled(stop.signum or signal.SIGINT)
        if _agreed(wants_stop, distributed, device):
            stopped_early = True
            break

    epochs_done = epoch + 1 if stopped_early else tr.epochs
    result = TrainResult(run_dir=run_dir, best_metrics=best_metrics, best_epoch=best_epoch,
                         epochs_run=epochs_done - start_epoch, stopped_early=stopped_early,
                         warnings=run_warnings(active, best_metrics, select_split, step))
    if is_main:
        for message in result.warnings:
            logger.log({"event": "warning", "message": message})
            logger.echo(f"warning: {message}")
    if is_main and stopped_early:
        logger.log({"event": "stopped_early", "epoch": epochs_done})
        logger.echo(f"stopped after epoch {epochs_done} by the epoch hook; no test evaluation")
    elif is_main:
        if not (run_dir / "ckpt" / "best.pt").exists():
            save_checkpoint(run_dir / "ckpt" / "best.pt", checkpoint_payload(tr.epochs))
        best = load_checkpoint(run_dir / "ckpt" / "best.pt")
        method.load_state_dict(best["model"])
        if cfg.data.test_split and task.has_split(store, cfg.data.test_split):
            result.test_metrics = write_eval(method, task, task.eval_split(store, cfg.data.test_split), cfg, device,
                                             run_dir / "eval" / f"{cfg.data.test_split}.json",
                                             checkpoint=run_dir / "ckpt" / "best.pt",
                                             warnings=inactive_terms(active, step))
            logger.log({"event": "test", **flatten_numbers(result.test_metrics, sep="/", scalars_only=True)})
    logger.close()
    return result


__all__ = ["EpochHook", "TrainResult", "TrainingDiverged", "train", "run_stage", "lr_factor", "seed_everything",
           "feature_dims"]
