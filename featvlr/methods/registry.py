"""Method registry: ``@register_method("name")`` on a :class:`~featvlr.methods.base.Method`,
:func:`create_method` to build one, :func:`list_methods` to list them (by task).

Every module of the :mod:`featvlr.methods` package is imported on the first lookup, so a
built-in method is registered by writing its file; nothing else lists it. A method defined
anywhere else (a user's module, a test file) is registered by importing that module, which
runs its decorator. An error while importing a method module is raised, never hidden.

Example::

    method = create_method(cfg, dims=dims)                    # a run config's method
    method = create_method("vse", {"embed_dim": 16}, dims=dims)  # defaults, one option changed
    list_methods(task="composed")                             # ['combiner', 'mlcl']
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import typing
from collections.abc import Mapping
from typing import Any

from featvlr.core.errors import ConfigError

TASKS = ("cross_modal", "composed")

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


def list_methods(task: str | None = None) -> list[str]:
    """Names of the registered methods, sorted; with ``task`` ("cross_modal" or "composed")
    those of that task only."""
    _discover()
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    return sorted(n for n, cls in _METHODS.items() if task is None or cls.task == task)


def get_method(name: str) -> type:
    _discover()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint} (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def _options(cls: type, given: Any, where: str) -> Any:
    """``given`` options of the dataclass ``cls``: ``None`` for the defaults, a mapping of
    fields to change, or an instance (used as it is). In a mapping, an integral float given
    to an ``int`` field becomes that integer, as when a config loads; every other value is
    passed as it is (its type and the field's rule are checked when the method is built)."""
    if given is None:
        return cls()
    if isinstance(given, Mapping):
        known = [f.name for f in dataclasses.fields(cls)]
        for key in given:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown config key '{where}.{key}'{hint}", key=f"{where}.{key}")
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation that does not resolve: values are passed as they are
            hints = {}
        return cls(**{key: int(value) if hints.get(key) is int and isinstance(value, float) and value.is_integer()
                      else value for key, value in given.items()})
    return given


def create_method(name_or_config: Any, model_opts: Any = None, loss_opts: Any = None, *, dims: Any):
    """Build a registered method for features of size ``dims``
    (:class:`~featvlr.methods.base.FeatureDims`).

    ``name_or_config`` is a method name or a run config (anything with ``method``, ``model``
    and ``loss``: :class:`featvlr.config.Config`), whose option sections are used unless
    ``model_opts`` / ``loss_opts`` are given. Options are instances of the method's
    ``ModelOptions`` / ``LossOptions``, mappings of fields to change from the defaults, or
    ``None`` (the defaults). The schema's ranges and choices are checked on them as on a
    loaded config. The method is in training mode on the CPU.
    """
    if isinstance(name_or_config, str):
        name = name_or_config
    else:
        name = name_or_config.method
        model_opts = name_or_config.model if model_opts is None else model_opts
        loss_opts = name_or_config.loss if loss_opts is None else loss_opts
    cls = get_method(name)
    return cls(_options(cls.ModelOptions, model_opts, "model"), _options(cls.LossOptions, loss_opts, "loss"), dims)
