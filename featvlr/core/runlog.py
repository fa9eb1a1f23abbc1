"""Run logging: JSON lines (canonical), optional TensorBoard, and an epoch progress bar
(redrawn on a terminal, plain lines in a file or a pipe)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class _Bar:
    """A progress bar with loss and items/s: a tqdm bar on a terminal, a few plain lines
    (about every quarter and at the end) when the stream is a file or a pipe, nothing when
    disabled."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: Any = None):
        self.bar = None
        self.lines = False
        self.total, self.desc, self.done = total, desc, 0
        self.stream = stream or sys.stderr
        self.next_line = 0
        self.postfix: dict[str, float] = {}
        if not enabled:
            return
        if is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=self.stream)
        else:
            self.lines = True
            self.step = max(1, -(-total // 4))
            self.next_line = self.step

    def update(self, n: int = 1, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)
        elif self.lines:
            self.done += n
            self.postfix = postfix
            if self.done >= self.next_line and self.done < self.total:
                self._line()
                self.next_line = self.done + self.step

    def _line(self) -> None:
        extra = "".join(f", {k} {v:.4g}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.done}/{self.total}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.done:
            self._line()
            self.lines = False

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, *, enabled: bool = True, stream: Any = None) -> _Bar:
    """A bar on a terminal, a few plain lines in a file or a pipe (``with`` closes it)."""
    return _Bar(total, desc, enabled, stream)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar belongs)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def check_tensorboard(asked_by: str) -> None:
    """Raise a one-line :class:`~featvlr.core.errors.ConfigError` naming ``asked_by`` (the option or
    config key) when the optional TensorBoard package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from featvlr.core.errors import ConfigError

        raise ConfigError(f"{asked_by}: TensorBoard is not installed (pip install 'featvlr[tensorboard]')") from None


class RunLogger:
    """Appends one JSON object per line to ``<run_dir>/log.jsonl`` (with a wall-clock ``time``),
    mirrors numeric values to TensorBoard when asked (``<run_dir>/tensorboard``: every numeric
    field of each step and epoch record, tagged ``step/<key>`` and ``epoch/<key>`` at the
    global step), and prints short epoch lines. An epoch record without ``lr`` gets the
    ``lr`` of the epoch's last step record: the rate after its last scheduler step, the one
    the next step uses."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False, quiet: bool = False):
        self._lr: float | None = None
        self.enabled = enabled
        self.quiet = quiet
        self.path = Path(run_dir) / "log.jsonl"
        self.tb = None
        if enabled and tensorboard:
            check_tensorboard("train.tensorboard=true")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        if record.get("event") == "step" and isinstance(record.get("lr"), (int, float)):
            self._lr = float(record["lr"])
        elif record.get("event") == "epoch" and "lr" not in record and self._lr is not None:
            record["lr"] = self._lr  # the rate after the epoch's last scheduler step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "step", "epoch"):
                    self.tb.add_scalar(f"{record.get('event', 'log')}/{key}", value, record["step"])

    def echo(self, line: str) -> None:
        if self.enabled and not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def progress(self, total: int, desc: str, enabled: bool = True) -> _Bar:
        return _Bar(total, desc, enabled and self.enabled)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``log.jsonl``."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
