"""Search spaces of `featvlr tune`: ``KEY=SPEC`` items, read like ``--set``, checked against
the config schema before anything runs.

Specs::

    train.lr=log:1e-4:3e-3        a float, log-uniform between the ends (both included)
    loss.margin=0.1:0.4           a float, uniform (an integer key: an integer, uniform)
    loss.n_dim=int:64:512         an integer, uniform (int:log:64:512 for log-uniform)
    loss.kind=choice:hinge,infonce   one of the values (each parsed as YAML: 0.1, true, [1,2])

A key must exist in the config's schema (its method's ``model``/``loss`` options included);
both ends of a range and every choice must be values the key accepts, a range must run from
low to high, and a log range must stay above 0. Errors are :class:`ConfigError` naming the
``--space`` item (or the config's ``tune.space``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from featvlr.config import load_config, read_yaml
from featvlr.core.errors import ConfigError


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` is ``float``, ``int`` or ``choice``."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        """The spec as a user writes it (what ``tune.yaml`` and the study record)."""
        if self.kind == "choice":
            return "choice:" + ",".join(format_value(c) for c in self.choices)
        prefix = ("int:" if self.kind == "int" else "") + ("log:" if self.log else "")
        return f"{prefix}{format_value(self.low)}:{format_value(self.high)}"

    def suggest(self, trial) -> Any:
        """Draw this key's value for an Optuna trial (categorical values are stored as text
        so that lists and mixed types survive any storage)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        text = trial.suggest_categorical(self.key, [format_value(c) for c in self.choices])
        return yaml.safe_load(text)


def split_commas(text: str) -> list[str]:
    """Split on commas outside brackets: ``"[1,2],[3]"`` -> ``["[1,2]", "[3]"]``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out]


def format_value(value: Any) -> str:
    """A value as ``--set`` takes it (``[1,2]``, ``true``, ``0.0003``)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _number(text: str, item: str, where: str) -> float | int:
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        try:
            value = float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} {item}: {text!r} is not a number")
    return value


def parse_dimension(item: str, where: str = "--space") -> Dimension:
    """``"train.lr=log:1e-4:3e-3"`` -> a :class:`Dimension` (syntax only; see :func:`check_space`)."""
    key, sep, spec = item.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise ConfigError(f"{where} expects KEY=SPEC (log:A:B, A:B, int:A:B, choice:X,Y), got {item!r}")
    if spec.startswith("choice:"):
        raw = [v for v in split_commas(spec[len("choice:"):]) if v]
        if not raw:
            raise ConfigError(f"{where} {item}: choice: needs at least one value")
        values = tuple(yaml.safe_load(v) for v in raw)
        if len({format_value(v) for v in values}) != len(values):
            raise ConfigError(f"{where} {item}: a choice is listed twice")
        return Dimension(key, "choice", choices=values)
    parts = spec.split(":")
    flags = set()
    while parts and parts[0] in ("int", "log", "float"):
        flags.add(parts.pop(0))
    if len(parts) != 2:
        raise ConfigError(f"{where} {item}: a range is LOW:HIGH, log:LOW:HIGH or int:LOW:HIGH")
    low, high = (_number(p, item, where) for p in parts)
    kind = "int" if "int" in flags else "float"
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"{where} {item}: int: needs integer ends")
    if kind == "int":
        low, high = int(low), int(high)
    if low >= high:
        raise ConfigError(f"{where} {item}: the range is reversed or empty ({format_value(low)} >= "
                          f"{format_value(high)}); write LOW:HIGH")
    if "log" in flags and low <= 0:
        raise ConfigError(f"{where} {item}: a log range needs a low end above 0")
    return Dimension(key, kind, low, high, log="log" in flags)


def _schema_type(cfg, key: str) -> Any:
    """The field type of a dotted key in a loaded config (``int``, ``float``, ...)."""
    import dataclasses
    import typing

    obj: Any = cfg
    for part in key.split(".")[:-1]:
        obj = getattr(obj, part)
    hints = typing.get_type_hints(type(obj)) if dataclasses.is_dataclass(obj) else {}
    return hints.get(key.split(".")[-1])


def check_space(config: str | Path | None, dims: list[Dimension], extra: list[str] | None = None,
                base: dict[str, Any] | None = None, where: str = "--space") -> list[Dimension]:
    """Validate every dimension against the config's schema: the key exists, each end of a
    range and each choice is a value the key accepts. An integer key searched as ``A:B``
    becomes an integer range. Returns the (possibly retyped) dimensions."""
    extra = list(extra or [])
    seen: set[str] = set()
    out = []
    for dim in dims:
        if dim.key in seen:
            raise ConfigError(f"{where} {dim.key} given twice")
        seen.add(dim.key)
        if dim.key in ("train.seed",):
            raise ConfigError(f"{where} {dim.key}: the seed is not a hyper-parameter (every trial uses the "
                              "config's seed; `featvlr compare --seeds` retrains the best over seeds)")
        probes = list(dim.choices) if dim.kind == "choice" else [dim.low, dim.high]
        cfg = None
        for value in probes:
            try:
                cfg = load_config(config, extra + [f"{dim.key}={format_value(value)}"], base=base)
            except ConfigError as exc:
                message = str(exc)
                message = message[len("--set "):] if message.startswith("--set ") else message
                message = message[len(dim.key) + 2:] if message.startswith(dim.key + ": ") else message
                raise ConfigError(f"{where} {dim.key}={dim.spec}: {message}") from None
        if dim.kind == "float":
            tp = _schema_type(cfg, dim.key)
            if tp is int:
                if not all(float(v).is_integer() for v in (dim.low, dim.high)):
                    raise ConfigError(f"{where} {dim.key}={dim.spec}: {dim.key} takes integers")
                dim = Dimension(dim.key, "int", int(dim.low), int(dim.high), log=dim.log)
            elif tp is not float:
                raise ConfigError(f"{where} {dim.key}={dim.spec}: {dim.key} is not a number; use choice:")
        out.append(dim)
    return out


def config_space(config: str | Path) -> list[str]:
    """The ``tune.space`` items a config file declares (``[]`` when it has none)."""
    tune = read_yaml(config).get("tune") or {}
    space = tune.get("space") or {}
    if not isinstance(space, dict):
        raise ConfigError(f"{config}: tune.space: expected a mapping of key: spec")
    return [f"{k}={v}" for k, v in space.items()]


def parse_space(config: str | Path | None, items: list[str], extra: list[str] | None = None,
                base: dict[str, Any] | None = None, where: str = "--space") -> list[Dimension]:
    """Parse and validate ``KEY=SPEC`` items (see the module docstring)."""
    dims = check_space(config, [parse_dimension(i, where) for i in items], extra, base=base, where=where)
    if not dims:
        raise ConfigError(f"{where}: nothing to search (give --space KEY=SPEC or declare tune.space in the config)")
    return dims


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


__all__ = ["Dimension", "check_space", "config_space", "format_value", "parse_dimension", "parse_space",
           "split_commas"]
