"""The training loop's view of the data: an epoch of batches on the training device.

:class:`BatchStream` builds each batch with the three steps of
:class:`~featvlr.data.seeded.SeededBatches` into reused buffers. With ``prefetch > 0`` the
plan and gather of the next batches run in a background thread (torch releases the GIL
while it copies), ``prefetch`` batches ahead of the step, into page-locked buffers when the
rows live on the host and training runs on a GPU; the copies to the GPU do not block. The
time the loop waited for its batches is kept in :attr:`BatchStream.wait_s`, so the run log
shows when input, not arithmetic, limits training.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from featvlr.data.buffers import BufferPool

_DONE = object()


class BatchStream:
    """Batches of the current epoch of ``batches`` on ``device``.

    Args:
        batches: a :class:`~featvlr.data.seeded.SeededBatches` (its ``set_epoch`` is the caller's).
        device: the training device.
        prefetch: batches built ahead in a background thread (0: built in the loop).
    """

    def __init__(self, batches: Any, device: torch.device | str, *, prefetch: int = 2):
        self.batches = batches
        self.device = torch.device(device)
        self.prefetch = max(0, int(prefetch))
        on_host = batches.table_device.type == "cpu"
        self.pool = BufferPool(self.prefetch + 2, pin=on_host and self.device.type == "cuda")
        self._events: dict[int, Any] = {}
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def _build(self, b: int) -> tuple[dict[str, Any], Any]:
        slot = self.pool.slot(b)
        event = self._events.pop(slot.index, None)
        if event is not None:  # the copies out of this slot's host buffers are done
            event.synchronize()
        return self.batches.gather(self.batches.plan(b), slot), slot

    def _finish(self, host: dict[str, Any], slot: Any) -> dict[str, torch.Tensor]:
        batch = self.batches.finalize(host, self.device, slot)
        if self.device.type == "cuda" and self.pool.pin:
            event = torch.cuda.Event()
            event.record()
            self._events[slot.index] = event
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.wait_s = 0.0
        if self.prefetch == 0:
            for b in range(len(self.batches)):
                t0 = time.perf_counter()
                batch = self._finish(*self._build(b))
                self.wait_s += time.perf_counter() - t0
                yield batch
            return
        yield from self._threaded()

    def _threaded(self) -> Iterator[dict[str, torch.Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for b in range(len(self.batches)):
                    if not put(self._build(b)):
                        return
                put(_DONE)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the training loop
                put(exc)

        thread = threading.Thread(target=produce, name="featvlr-batches", daemon=True)
        thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch = self._finish(*item)
                self.wait_s += time.perf_counter() - t0
                yield batch
        finally:
            stop.set()
            thread.join()
