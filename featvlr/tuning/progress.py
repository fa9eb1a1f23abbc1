"""Progress a person can follow: every stderr line of a run's training is prefixed with the
run's name (``[trial_0003] epoch 2: ...``), and each finished run or trial gets one line on
stdout."""
from __future__ import annotations

import io
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class _Prefixed(io.TextIOBase):
    """A text stream that writes ``prefix`` before the first character of every line (after a
    newline or a carriage return, so a redrawn terminal bar keeps it too)."""

    def __init__(self, stream: Any, prefix: str):
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for ch in text:
            if ch in "\n\r":
                self.at_start = True
            elif self.at_start:
                out.append(self.prefix)
                self.at_start = False
            out.append(ch)
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def named_progress(name: str) -> Iterator[None]:
    """Within the block, stderr lines start with ``[name] ``."""
    old = sys.stderr
    sys.stderr = _Prefixed(old, f"[{name}] ")
    try:
        yield
    finally:
        sys.stderr = old


def say(line: str) -> None:
    """One progress line on stdout, flushed (pipes and log files see it at once)."""
    print(line, file=sys.stdout, flush=True)


def fmt_params(params: dict[str, Any]) -> str:
    from featvlr.tuning.space import format_value

    def short(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else format_value(v)

    return " ".join(f"{k}={short(v)}" for k, v in params.items()) or "(no parameters)"


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


__all__ = ["fmt_params", "fmt_seconds", "named_progress", "say"]
