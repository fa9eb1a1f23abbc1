"""Method registry: ``@register_method("name")`` on a :class:`~featvlr.methods.base.Method`."""
from __future__ import annotations

import difflib
import importlib

from featvlr.errors import ConfigError

_METHODS: dict[str, type] = {}
# Modules imported on first lookup so that every built-in method is registered.
BUILTIN_MODULES = ("vse", "hrem", "covlr", "rvlr", "gls", "mlcl", "combiner")


def register_method(name: str):
    """Class decorator that registers a method under ``name``."""

    def deco(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"featvlr.methods.{mod}")
        except ModuleNotFoundError as exc:  # a method module not written yet
            if exc.name != f"featvlr.methods.{mod}":
                raise


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    _load_builtins()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint} (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]
