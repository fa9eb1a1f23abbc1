"""Ranges and choices of config fields, declared where the field is (dataclass field metadata).

The config dataclasses (:mod:`featvlr.config`) and every method's ``ModelOptions`` /
``LossOptions`` declare what values a field takes; :func:`featvlr.config.build_dataclass`
checks them when a config is loaded, so a bad value is refused before any work starts,
with the key and where it came from; :func:`check_fields` applies the same rules, and the
types of the fields' annotations (:func:`check_type`), to an options object built in code (a
method checks its options so when it is constructed). Methods do not check these ranges and
choices again themselves. A field that declares a rule never takes ``None``.

Example::

    @dataclass
    class MyLossOptions:
        margin: float = number(0.2, min=0)
        kind: str = choice("hinge", "hinge", "infonce")
        modalities: list[str] = choice(lambda: ["image"], "image", "text", each=True)
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Callable

# The metadata key that holds a field's :class:`Rule`.
RULE = "featvlr_rule"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What values a field accepts: ``choices`` (strings), or a number range. ``min_open``
    and ``max_open`` exclude the end itself. For a list field every item is checked, and
    ``nonempty`` refuses an empty list."""

    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    nonempty: bool = False

    def describe(self) -> str:
        """The accepted values in words, e.g. ``one of step, cosine, constant`` or ``> 0``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = None if self.min is None else f"{'>' if self.min_open else '>='} {_num(self.min)}"
        high = None if self.max is None else f"{'<' if self.max_open else '<='} {_num(self.max)}"
        if low and high:
            return f"{low} and {high}"
        return low or high or "any value"

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return False
        if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
            return False
        return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _field(default: Any, rule: Rule) -> Any:
    meta = {RULE: rule}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def number(default: Any, *, min: float | None = None, max: float | None = None, above: float | None = None,
           below: float | None = None) -> Any:
    """A numeric field in a range: ``min``/``max`` inclusive, ``above``/``below`` exclusive.
    A callable ``default`` is a default factory (a list of numbers, each checked)."""
    return _field(default, Rule(min=above if above is not None else min, max=below if below is not None else max,
                                min_open=above is not None, max_open=below is not None))


def choice(default: Any, *choices: str, each: bool = False) -> Any:
    """A string field that takes one of ``choices`` (for a list field, ``each=True``: every
    item does, and the list is not empty). A callable ``default`` is a default factory."""
    return _field(default, Rule(choices=tuple(choices), nonempty=each))


def rule_of(f: dataclasses.Field) -> Rule | None:
    """The :class:`Rule` of a dataclass field, or None."""
    return f.metadata.get(RULE)


def check_value(value: Any, rule: Rule, where: str, error: Callable[[str], Exception]) -> None:
    """Raise ``error(message)`` when ``value`` (or an item of a list value) breaks ``rule``."""
    is_list = isinstance(value, (list, tuple))
    items = value if is_list else [value]
    if is_list and rule.nonempty and not value:
        raise error(f"{where}: expected a non-empty list of {rule.describe()}")
    for i, item in enumerate(items):
        if item is not None and rule.accepts(item):
            continue
        at = f"{where}[{i}]" if is_list else where
        raise error(f"{at}: expected {rule.describe()}, got {item!r}")


def check_type(value: Any, tp: Any, where: str, error: Callable[[str], Exception]) -> None:
    """Raise ``error(message)`` when ``value`` is not of the annotated type ``tp``, in the
    words of the config loader: ``int`` takes an integer (no bool; an integral float such
    as ``16.0`` passes), ``float`` a number (an int too), ``str`` a string, ``bool`` a bool,
    ``list[...]`` / ``tuple[...]`` a list or tuple whose items are checked, ``X | None``
    also ``None``. Other annotations (``Any``, mappings, dataclasses) are not checked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return
        errors: list[Exception] = []
        for arg in args:
            try:
                check_type(value, arg, where, error)
                return
            except Exception as exc:  # ``error`` may build any exception type
                errors.append(exc)
        if errors:
            raise errors[0]
        return
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = typing.get_args(tp)
        if len(inner) == 1 or (len(inner) == 2 and inner[1] is Ellipsis):  # list[X], tuple[X, ...]
            for i, item in enumerate(value):
                check_type(item, inner[0], f"{where}[{i}]", error)
        return
    is_bool = isinstance(value, bool)
    if tp is bool and not is_bool:
        raise error(f"{where}: expected true/false, got {value!r}")
    if tp is int and (is_bool or not (isinstance(value, numbers.Integral)
                                      or isinstance(value, float) and value.is_integer())):
        raise error(f"{where}: expected an integer, got {value!r}")
    if tp is float and (is_bool or not isinstance(value, numbers.Real)):
        raise error(f"{where}: expected a number, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise error(f"{where}: expected a string, got {value!r}")


def check_fields(obj: Any, where: str, error: Callable[[str, str], Exception]) -> None:
    """Check every field of the dataclass instance ``obj``: its type against the field's
    annotation (:func:`check_type`), then the field's :class:`Rule` when it declares one.
    ``error(message, key)`` is raised for the first bad one, ``key`` being ``<where>.<field>``
    (nothing is checked on an object that is no dataclass instance)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    try:
        hints = typing.get_type_hints(type(obj))
    except Exception:  # an annotation that does not resolve is left unchecked
        hints = {}
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}"
        value = getattr(obj, f.name)
        if f.name in hints:
            check_type(value, hints[f.name], key, lambda message, key=key: error(message, key))
        rule = rule_of(f)
        if rule is not None:
            check_value(value, rule, key, lambda message, key=key: error(message, key))
