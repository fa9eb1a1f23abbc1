"""Method registry: ``@register_method("name")`` on a :class:`~featvlr.methods.base.Method`.

Every module of the :mod:`featvlr.methods` package is imported on the first lookup, so a
built-in method is registered by writing its file; nothing else lists it. A method defined
anywhere else (a user's module, a test file) is registered by importing that module, which
runs its decorator. An error while importing a method module is raised, never hidden.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil

from featvlr.core.errors import ConfigError

_METHODS: dict[str, type] = {}
_PACKAGE = "featvlr.methods"
_discovered = False


def register_method(name: str):
    """Class decorator that registers a method under ``name``."""

    def deco(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def method_modules() -> list[str]:
    """Full names of the modules of the :mod:`featvlr.methods` package, sorted."""
    package = importlib.import_module(_PACKAGE)
    return sorted(f"{_PACKAGE}.{info.name}" for info in pkgutil.iter_modules(package.__path__))


def _discover() -> None:
    """Import every module of the methods package once (their decorators register them)."""
    global _discovered
    if _discovered:
        return
    for module in method_modules():
        importlib.import_module(module)
    _discovered = True


def list_methods() -> list[str]:
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    _discover()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint} (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]
