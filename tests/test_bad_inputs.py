"""Every bad input and every interruption: one line naming the file or key, its exit status,
and nothing half-written.

``CASES`` is the table: one row per bad input of the command line, each run in this process
(the ``cli`` fixture) against tiny caches, asserting the exit status, a substring of the
one-line message and that the files the command would write do not exist. The config rows
are generated from the schema: every numeric and choice field of every method's options.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest

from featvlr.config import DataConfig, EvalConfig, TrainConfig
from featvlr.methods.registry import get_method, list_methods
from featvlr.schema import rule_of

from synthetic import write_synthetic_cache, write_tiny_cache


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("featvlr: error: "), err
    return lines[0]


def _no_partial(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith((".partial", ".tmp")) or ".partial" in p.name]
    assert not left, left


# -- config values: generated from the schema -----------------------------------------------


def bad_values(f: dataclasses.Field, tp) -> list:
    """Values of field ``f`` that its rule refuses (a wrong type, out of range, not a choice)."""
    rule = rule_of(f)
    origin = typing.get_origin(tp)
    inner = typing.get_args(tp)[0] if origin is list else tp
    if rule is None:
        return []
    if rule.choices:
        return [["nonsense"] if origin is list else "nonsense"]
    out: list = ["abc"]
    step = 1 if inner is int else 0.5
    if rule.min is not None:
        out.append(rule.min if rule.min_open else rule.min - step)
    if rule.max is not None:
        out.append(rule.max if rule.max_open else rule.max + step)
    return [[v] if origin is list and not isinstance(v, str) else v for v in out]


def _config_cases() -> list:
    sections = {("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig)}
    cases = []
    for name in list_methods():
        method = get_method(name)
        owned = [("model", method.ModelOptions), ("loss", method.LossOptions)]
        for section, cls in owned + (sorted(sections, key=str) if name == "vse" else []):
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                tp = hints[f.name]
                inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
                if inner in (int, float) or rule_of(f) is not None:
                    assert rule_of(f) is not None, f"{name}: {section}.{f.name} has no range"
                for value in bad_values(f, tp):
                    cases.append(pytest.param(name, f"{section}.{f.name}", value,
                                              id=f"{name}-{section}.{f.name}={value}"))
    return cases


def _yaml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


@pytest.mark.parametrize("method, key, value", _config_cases())
def test_every_option_refuses_bad_values(cli, tmp_path, method, key, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"method: {method}\n")
    code, _, err = cli("train", "--config", config, "--set", f"{key}={_yaml(value)}", "--out", tmp_path / "run")
    line = _one_line(err)
    assert code == 2
    assert f"--set {key}" in line
    assert not (tmp_path / "run").exists()


def test_file_values_name_the_file_and_key(cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("method: vse\ntrain:\n  lr: abc\n")
    code, _, err = cli("train", "--config", config, "--set", "train.epochs=2", "--out", tmp_path / "run")
    assert code == 2 and f"{config}: train.lr: expected a number" in _one_line(err)


@pytest.mark.parametrize("value, expected", [("no", "no"), ("yes", "yes"), ("off", "no"), ("auto", "auto")])
def test_yes_no_options_take_yaml_booleans(value, expected):
    from featvlr.config import load_config

    cfg = load_config(None, [f"data.in_memory={value}", f"data.on_device={value}"])
    assert cfg.data.in_memory == cfg.data.on_device == expected
