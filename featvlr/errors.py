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
    """A configuration key or value is unknown or has the wrong type."""
