"""Errors that the command line reports as one clear line with exit status 2."""
from __future__ import annotations


class FeatvlrError(Exception):
    """Base class: bad input or configuration; the message names the file and the problem."""


class InputError(FeatvlrError):
    """A user-supplied file or folder is missing, malformed or inconsistent."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class ConfigError(FeatvlrError):
    """A configuration key or value is unknown, has the wrong type or is out of range.

    ``key`` is the dotted key at fault when known (``train.lr``), so the loader can say
    whether the value came from a file or from ``--set``.
    """

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.key))


class Interrupted(SystemExit):
    """SIGINT or SIGTERM stopped a command after it said what is kept and how to go on.

    A :class:`SystemExit` with status 128 + the signal number (130 for SIGINT, 143 for
    SIGTERM), so the process ends with the status a shell expects of a stopped command;
    ``message`` is the line that was printed.
    """

    def __init__(self, message: str, exit_code: int = 130):
        self.message = message
        super().__init__(exit_code)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.code))
