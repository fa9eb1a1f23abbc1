"""Setting a run up: the run's state, the method and its optimiser, ``--resume``, DDP wrapping
and the run's log (the stages :mod:`featvlr.training.trainer` calls before its first epoch)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from featvlr.cache.store import StoreSplit, open_store
from featvlr.config import Config, config_to_dict, save_config
from featvlr.config.provenance import check_run_config, config_hash
from featvlr.core import distributed as dist_utils
from featvlr.core.checkpoint import load_checkpoint, rng_state, set_rng_state
from featvlr.core.errors import ConfigError, InputError
from featvlr.core.fileio import remove_stale_partials
from featvlr.core.runlog import RunLogger
from featvlr.inference.loading import load_method
from featvlr.methods.base import FeatureDims, Method
from featvlr.methods.registry import create_method, get_method
from featvlr.tasks import get_task
from featvlr.training.guard import check_resumable, check_state_dict


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


def amp_enabled(cfg: Config, device: torch.device) -> bool:
    """Mixed precision runs with ``train.amp`` on CUDA only."""
    return cfg.train.amp and device.type == "cuda"


@dataclass
class RunState:
    """What the stages of one run share: its config and place, the method and its optimiser,
    and the counters a checkpoint saves (built by :func:`setup`, advanced by each epoch)."""

    cfg: Config
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    select_split: str
    store: Any
    task: Any
    dims: FeatureDims
    placement: str
    method: Method
    batches: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp_dtype: torch.dtype
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the method, wrapped for DDP or compiled when asked
    logger: RunLogger | None = None
    start_epoch: int = 0
    step: int = 0
    best_value: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    active: dict[str, bool] = field(default_factory=dict)  # per "*_loss" / "*_on": non-zero at some step

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist_utils.is_distributed()

    @property
    def use_amp(self) -> bool:
        return amp_enabled(self.cfg, self.device)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def checkpoint_payload(self, epoch_done: int) -> dict[str, Any]:
        """Everything ``--resume`` needs, in tensors and plain data (:mod:`featvlr.core.checkpoint`)."""
        cfg = self.cfg
        return {
            "method": cfg.method, "config": config_to_dict(cfg), "config_sha256": config_hash(cfg),
            "dims": vars(self.dims).copy(),
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": epoch_done, "step": self.step, "best_value": self.best_value, "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics, "rng": rng_state(), "active_terms": dict(self.active),
        }


def check_run_folder(cfg: Config, run_dir: Path, *, resume: bool) -> None:
    """Before any work: the selection split is allowed, a new run does not overwrite a checkpoint,
    and temporary files of a run killed while writing (SIGKILL) are removed (main rank)."""
    _select_split(cfg)
    if (run_dir / "ckpt" / "last.pt").exists() and not resume:
        raise InputError(run_dir, "the run folder has a checkpoint already; pass --resume to continue it or "
                         "choose another --out")
    if dist_utils.is_main():
        for folder in (run_dir, run_dir / "ckpt", run_dir / "eval"):
            remove_stale_partials(folder)


def setup(cfg: Config, run_dir: Path, device: torch.device, *, resume: bool
          ) -> tuple[RunState, dict[str, Any] | None]:
    """Resolve the config (the method's :meth:`~featvlr.methods.base.Method.prepare`, once its
    prerequisite runs are trained) and build the method, its batches and its optimiser.
    Returns the run and, with ``resume``, ``last.pt``."""
    method_cls = get_method(cfg.method)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if dist_utils.is_distributed() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    select_split = _select_split(cfg)
    cfg = method_cls.prepare(cfg, run_dir, load_method)
    ckpt = _resume_checkpoint(cfg, run_dir) if resume else None
    changed = check_run_config(run_dir, cfg, resume=resume, done_epochs=None if ckpt is None else int(ckpt["epoch"]))
    seed_everything(cfg.train.seed + rank)

    store = open_store(cfg.data.cache)
    train_split = store.split(cfg.data.train_split)
    task = get_task(method_cls.task)
    task.check_splits(store, cfg, select_split)
    placement = _placement(cfg, train_split, device)
    dims = feature_dims(train_split)
    method = create_method(cfg, dims=dims)
    method.attach_runs(load_method)
    method = method.to(device)
    batches = task.build_batches(cfg, train_split, rank=rank, world=world, placement=placement, device=device)
    optimizer, scheduler, scaler, amp_dtype = _optimiser(cfg, method, len(batches), device)
    run = RunState(cfg=cfg, run_dir=run_dir, device=device, rank=rank, world=world, select_split=select_split,
                   store=store, task=task, dims=dims, placement=placement, method=method, batches=batches,
                   optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype, changed=changed)
    return run, ckpt


def _resume_checkpoint(cfg: Config, run_dir: Path) -> dict[str, Any]:
    last = run_dir / "ckpt" / "last.pt"
    if not last.exists():
        raise InputError(run_dir, "--resume: the run folder has no ckpt/last.pt")
    ckpt = load_checkpoint(last)
    check_resumable(ckpt, cfg, last)
    return ckpt


def _optimiser(cfg: Config, method: Method, steps_per_epoch: int, device: torch.device):
    """AdamW over the method's parameter groups, the schedule (:func:`lr_factor`), and AMP's
    dtype and gradient scaler (CUDA only; bf16 where supported)."""
    tr = cfg.train
    optimizer = torch.optim.AdamW(method.optimizer_groups(tr.lr, tr.weight_decay, decay_all=tr.decay_all_parameters),
                                  lr=tr.lr, weight_decay=tr.weight_decay)
    total_steps = steps_per_epoch * tr.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, schedule=tr.schedule, warmup_steps=tr.warmup_steps, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, lr_steps=tr.lr_steps, lr_gamma=tr.lr_gamma))
    use_amp = amp_enabled(cfg, device)
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return optimizer, scheduler, scaler, amp_dtype


def restore(run: RunState, ckpt: dict[str, Any]) -> None:
    """``--resume``: model, optimiser, schedule, scaler, counters, best so far and RNG state."""
    check_state_dict(run.method, ckpt["model"], run.run_dir / "ckpt" / "last.pt")
    run.method.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    run.best_value = float(ckpt["best_value"])
    run.best_epoch = int(ckpt["best_epoch"])
    run.best_metrics = dict(ckpt.get("best_metrics", {}))
    run.active = {str(k): bool(v) for k, v in dict(ckpt.get("active_terms", {})).items()}
    set_rng_state(ckpt["rng"])


def wrap_model(run: RunState) -> None:
    """The module the steps call: DDP under torchrun, compiled with ``train.compile``."""
    model: torch.nn.Module = run.method
    if run.distributed:
        model = DistributedDataParallel(run.method, device_ids=[run.device.index] if run.device.type == "cuda"
                                        else None, **run.method.ddp_options())
    if run.cfg.train.compile:
        model = torch.compile(model)
    run.model = model


def open_log(run: RunState, resume: bool) -> None:
    """The run folder's config and log (main rank), with a start or resume record."""
    cfg = run.cfg
    if run.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.run_dir / "config.yaml")
    run.logger = logger = RunLogger(run.run_dir, enabled=run.is_main, tensorboard=cfg.train.tensorboard)
    if run.is_main and resume:
        logger.log({"event": "resume", "epoch": run.start_epoch, "step": run.step,
                    "changed": {k: list(v) for k, v in run.changed.items()}})
        logger.echo(f"resuming {run.run_dir} after epoch {run.start_epoch} (step {run.step})"
                    + "".join(f"; {k}: {a} -> {b}" for k, (a, b) in run.changed.items()))
    if run.is_main and not resume:
        logger.log({"event": "start", "method": cfg.method, "device": str(run.device), "world_size": run.world,
                    "data_placement": run.placement, "prefetch": cfg.data.prefetch,
                    "steps_per_epoch": run.steps_per_epoch,
                    "parameters": sum(p.numel() for p in run.method.parameters())})
