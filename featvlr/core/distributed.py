"""torch.distributed helpers: process-group setup from torchrun's environment, and gathers.

Launch::

    torchrun --nproc_per_node 2 -m featvlr.cli train --config configs/f30k_vse.yaml

``gather_with_grad`` concatenates a tensor from every rank in rank order and keeps the
gradient path to the local slice, so in-batch contrastive and batch-graph losses see the
global batch (as the papers' all-gather does).

:class:`FailureWatch` ends every rank promptly when one fails: the failing rank posts its
error in the process group's store, and a thread on every other rank that sees it prints
the error and ends that process (a rank blocked in a collective could not raise it).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time

import torch
import torch.distributed as dist

from featvlr.core.errors import Interrupted


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    nccl on CUDA, gloo on CPU. Returns True when running distributed.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


@contextlib.contextmanager
def process_group(device_type: str):
    """The default process group for the block when launched by torchrun (:func:`init_from_env`),
    destroyed at the end of the block that created it: when the block ends normally or is
    stopped by a signal (every rank stops at the same step), not after an error (the process
    ends, and :class:`FailureWatch` still needs the group's store). Yields whether the run is
    distributed."""
    owns = not is_distributed()
    distributed = init_from_env(device_type)
    try:
        yield distributed
    except Interrupted:
        if owns and is_distributed():
            dist.destroy_process_group()
        raise
    if owns and is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.n = x.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        sizes_i = [int(s.item()) for s in sizes]
        ctx.sizes = sizes_i
        biggest = max(sizes_i)
        padded = x.new_zeros((biggest,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        out = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(out, padded.contiguous())
        return torch.cat([o[:s] for o, s in zip(out, sizes_i)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computes the same global loss on its copy; the gradient of the sum of
        # the rank losses w.r.t. the local slice is the all-reduced gradient. DDP then
        # averages parameter gradients over ranks, which undoes the factor world_size.
        # A differentiable all-reduce keeps second-order gradients (CoVLR's meta step) exact.
        from torch.distributed.nn.functional import all_reduce

        grad = all_reduce(grad.contiguous())
        start = sum(ctx.sizes[: rank()])
        return grad[start: start + ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 (rank order), differentiable for the local part."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without a gradient path (ids, masks, teacher features)."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


_WATCHES = itertools.count()


class FailureWatch:
    """Ends this rank when another rank of the run fails (see the module docstring).

    Every rank creates one per run (in the same order, so they share a key), ``start()``s
    it, calls ``fail(exc)`` when its own run raises, and ``stop()``s it at the end. A rank
    that sees another's failure prints ``featvlr: error: rank R failed: ...`` and exits with
    that rank's status (2 for a featvlr error, else 1). Without a process group it does nothing.
    """

    def __init__(self, poll_s: float = 0.2, ack_wait_s: float = 5.0, on_failure=None):
        self.on_failure = on_failure  # called (no arguments) before this rank ends for another's failure
        self.store = None
        if is_distributed() and world_size() > 1:
            try:
                from torch.distributed.distributed_c10d import _get_default_store

                self.store = _get_default_store()
            except Exception:  # noqa: BLE001 - no store: the launcher's own handling remains
                self.store = None
        self.key = f"featvlr/failed/{next(_WATCHES)}"
        self.poll_s, self.ack_wait_s = poll_s, ack_wait_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "FailureWatch":
        if self.store is not None:
            self._thread = threading.Thread(target=self._watch, name="featvlr-failure-watch", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            try:
                if not self.store.check([self.key]):
                    continue
                code, message = self.store.get(self.key).decode().split("|", 1)
                self.store.add(self.key + "/acks", 1)
            except Exception:  # noqa: BLE001 - the store is gone: the run is over either way
                return
            if self._done.is_set():
                return
            if self.on_failure is not None:
                try:
                    self.on_failure()
                except Exception:  # noqa: BLE001 - ending promptly comes first
                    pass
            print(f"featvlr: error: {message}", file=sys.stderr, flush=True)
            os._exit(int(code))

    def fail(self, exc: BaseException) -> None:
        """Post this rank's failure, and wait (briefly) until the other ranks have read it."""
        if self.store is None or self._done.is_set():
            return
        from featvlr.core.errors import FeatvlrError

        self._done.set()
        code = 2 if isinstance(exc, FeatvlrError) else 1
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            self.store.set(self.key, f"{code}|rank {rank()} failed: {text}")
            deadline = time.monotonic() + self.ack_wait_s
            while time.monotonic() < deadline and self.store.add(self.key + "/acks", 0) < world_size() - 1:
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the others end with the collective's own error
            pass

    def stop(self) -> None:
        self._done.set()
