"""SIGINT and SIGTERM as something a long command can finish cleanly.

:class:`StopSignals` installs handlers for both signals while a command runs (main thread
only; elsewhere it does nothing). In ``"raise"`` mode a signal raises :class:`Signalled`
(a ``KeyboardInterrupt``) where the program is, so ``with`` blocks and ``finally`` clauses
remove what they were writing; SIGTERM, which would otherwise end the process on the spot,
gets the same clean-up. In ``"flag"`` mode the first signal is only recorded
(``stop.signum``) for the caller to act on at a safe point, and a second one raises.

:func:`interrupted` prints the one line that says what was kept and how to go on, and
returns the :class:`~featvlr.core.errors.Interrupted` to raise (exit status 130 or 143)::

    with StopSignals("raise"):
        try:
            write_everything()
        except KeyboardInterrupt as exc:
            raise interrupted(signal_of(exc), "extract stopped; nothing was written") from None
"""
from __future__ import annotations

import signal
import sys
import threading

from featvlr.core.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Signalled(KeyboardInterrupt):
    """Raised by the handlers of :class:`StopSignals`; ``signum`` is the signal."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


_ACTIVE: list["StopSignals"] = []


def pending() -> int | None:
    """The signal an active :class:`StopSignals` has received, if any.

    A signal raised where Python cannot propagate it (inside a weakref callback or a
    ``__del__``) is printed and dropped by the interpreter; writers check this before they
    commit a result, so such an interruption still leaves nothing behind.
    """
    for stop in _ACTIVE:
        if stop.signum is not None:
            return stop.signum
    return None


class StopSignals:
    """Handle SIGINT and SIGTERM while the block runs (see the module docstring)."""

    def __init__(self, mode: str = "raise"):
        if mode not in ("raise", "flag"):
            raise ValueError(mode)
        self.mode = mode
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.mode == "flag" and self.signum is None:
            self.signum = signum
            return
        self.signum = self.signum or signum
        raise Signalled(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


def signal_of(exc: BaseException) -> int:
    """The signal behind an interruption (SIGINT for a plain ``KeyboardInterrupt``)."""
    return getattr(exc, "signum", signal.SIGINT)


def interrupted(signum: int, message: str, *, say: bool = True) -> Interrupted:
    """Print ``featvlr: interrupted (SIGINT): <message>`` (when ``say``) and return the
    :class:`Interrupted` to raise, with exit status 128 + ``signum``."""
    line = f"interrupted ({signal.Signals(signum).name}): {message}"
    if say:
        print(f"featvlr: {line}", file=sys.stderr, flush=True)
    return Interrupted(line, 128 + int(signum))
