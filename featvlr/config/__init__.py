"""Typed run configuration: dataclasses are the schema, YAML gives values, ``--set`` overrides.

A config has shared sections (``data``, ``train``, ``eval``) and two method-specific ones
(``model``, ``loss``) whose schema is the chosen method's ``ModelOptions`` / ``LossOptions``
dataclass. Unknown keys, values of the wrong type and values outside a field's range or choices
(declared on the field with :mod:`featvlr.core.schema`) are errors that name the key, where the
value came from (the file, or ``--set``) and, for a misspelt key, the closest valid one.

Example::

    cfg = load_config("configs/f30k_vse.yaml", ["train.lr=3e-4", "loss.margin=0.1"])
    save_config(cfg, "runs/x/config.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from featvlr.core.errors import ConfigError, InputError
from featvlr.core.fileio import atomic_write_text
from featvlr.core.schema import check_value, choice, number, rule_of

# Scenario names (featvlr.evaluation.options.SCENARIOS, which sits above the config).
SCENARIO_NAMES = ("i2t", "t2i", "i2i", "t2t", "i2it", "t2it", "composed")


@dataclass
class DataConfig:
    """Where the features are and how batches are made."""

    cache: str = "features/demo.h5"
    # Dataset name; selects evaluation protocols (coco: 5K + 5-fold 1K).
    dataset: str = "demo"
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    # Build the built-in demo dataset at `cache` first when it does not exist.
    build_demo: bool = False
    # VSE-infinity region dropout probability during training (0 disables it).
    region_dropout: float = number(0.2, min=0, below=1)
    # Keep the training split on the GPU: "auto" (when it takes at most half its free
    # memory), "yes" or "no". Batches are then gathered there, with no host work per step.
    on_device: str = choice("auto", "auto", "yes", "no")
    # Otherwise read it into RAM: "auto" (when it takes at most half the available memory),
    # "yes" or "no" (rows are read from a memory map of the cache, at page-cache speed).
    in_memory: str = choice("auto", "auto", "yes", "no")
    # Batches built ahead of the step in a background thread (0: built in the loop).
    prefetch: int = number(2, min=0)
    # Truncate token sequences to this many tokens (0 keeps all).
    max_tokens: int = number(0, min=0)
    # Feature-level text augmentation during training (VSE-infinity / HREM delete and replace
    # words): each token is dropped with probability token_dropout (one is always kept) and
    # replaced by a token of another caption with probability token_replace. 0 disables it: on the
    # demo (vse, 3 seeds) dropout 0.2 cost 10 test rsum and dropout 0.1 + replace 0.1 cost 15.
    token_dropout: float = number(0.0, min=0, below=1)
    token_replace: float = number(0.0, min=0, max=1)


@dataclass
class TrainConfig:
    """Optimiser, schedule, checkpointing and logging."""

    epochs: int = number(25, min=1)
    batch_size: int = number(128, min=2)
    lr: float = number(5e-4, above=0)
    weight_decay: float = number(1e-4, min=0)
    # Weight decay on every parameter, biases and norm weights included (vse_infty's AdamW);
    # false: the method's groups (by default none on biases and norms).
    decay_all_parameters: bool = False
    # "step" (lr x lr_gamma at each epoch in lr_steps), "cosine" or "constant".
    schedule: str = choice("step", "step", "cosine", "constant")
    lr_steps: list[int] = number(lambda: [15], min=0)
    lr_gamma: float = number(0.1, above=0)
    warmup_steps: int = number(0, min=0)
    # Largest gradient norm (0: no clipping).
    grad_clip: float = number(2.0, min=0)
    # Automatic mixed precision (bf16/fp16 autocast); used on CUDA only.
    amp: bool = True
    seed: int = number(0, min=0)
    # "auto" picks CUDA when present, else CPU.
    device: str = "auto"
    compile: bool = False
    # Split used to choose best.pt; choosing on the test split needs allow_test_selection.
    select_split: str = "dev"
    allow_test_selection: bool = False
    # Metric (a key of the evaluation results) that chooses best.pt; higher is better.
    select_metric: str = "rsum"
    # Evaluate on the select split every this many epochs (0: never; best.pt is then the last epoch).
    eval_every: int = number(1, min=0)
    # Cap on optimiser steps per epoch (0: the whole split); for quick ablations.
    max_steps_per_epoch: int = number(0, min=0)
    log_every: int = number(20, min=1)
    tensorboard: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    """Evaluation protocol."""

    scenarios: list[str] = choice(lambda: ["i2t", "t2i", "i2i", "t2t", "i2it", "t2it"], *SCENARIO_NAMES, each=True)
    # COCO 1K: 5 folds of 1000 images averaged (reported next to 5K when dataset is coco).
    folds: int = number(1, min=1)
    ndcg_ks: list[int] = number(lambda: [10, 20, 50], min=1)
    ndcg_exp_k: int = number(25, min=1)
    batch_size: int = number(512, min=1)
    # Largest number of query x gallery scores held at once by the chunked ranker.
    chunk_elements: int = number(50_000_000, min=1)
    # Scenarios evaluated on the dev split each epoch (cheap: cross-modal only by default).
    dev_scenarios: list[str] = choice(lambda: ["i2t", "t2i"], *SCENARIO_NAMES, each=True)


@dataclass
class Config:
    """A whole run."""

    method: str = "vse"
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: Any = None
    loss: Any = None


# --------------------------------------------------------------------------------------
# building and validating


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(valid)})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def build_dataclass(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Instantiate ``cls`` from a dict, rejecting unknown keys, wrong types and values outside
    a field's declared range or choices (:mod:`featvlr.core.schema`)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {values!r}", key=where or None)
    for key, value in (values or {}).items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}{_suggest(key, list(fields))}", key=path)
        rule = rule_of(fields[key])
        if rule is not None and isinstance(value, bool) and {"yes", "no"} <= set(rule.choices):
            value = "yes" if value else "no"  # YAML reads yes/no (and on/off) as booleans
        try:
            kwargs[key] = _coerce(value, hints[key], path)
        except ConfigError as exc:
            exc.key = exc.key or path
            raise
        if rule is not None:
            check_value(kwargs[key], rule, path, lambda message, path=path: ConfigError(message, key=path))
    return cls(**kwargs)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for part in parts[:-1]:
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section", key=dotted)
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 3e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain dict (e.g. a YAML file or a checkpoint's config) into a :class:`Config`."""
    from featvlr.methods.registry import get_method

    raw = dict(raw or {})
    tune = raw.pop("tune", None)  # the search space of `featvlr tune` / `compare`; not part of a run
    if tune is not None and not isinstance(tune, dict):
        raise ConfigError(f"tune: expected a mapping (space: {{key: spec}}), got {tune!r}", key="tune")
    top = [f.name for f in dataclasses.fields(Config)] + ["tune"]
    for key in raw:
        if key not in top:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, top)}", key=key)
    method_name = raw.get("method", "vse")
    if not isinstance(method_name, str):
        raise ConfigError(f"method: expected a name, got {method_name!r}", key="method")
    try:
        method = get_method(method_name)
    except ConfigError as exc:
        raise ConfigError(f"method: {exc}", key="method") from None
    def section(name: str) -> dict[str, Any]:
        value = raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {value!r}", key=name)
        return value

    return Config(
        method=method_name,
        name=_coerce(raw.get("name", ""), str, "name"),
        data=build_dataclass(DataConfig, section("data"), "data"),
        train=build_dataclass(TrainConfig, section("train"), "train"),
        eval=build_dataclass(EvalConfig, section("eval"), "eval"),
        model=build_dataclass(method.ModelOptions, section("model"), "model"),
        loss=build_dataclass(method.LossOptions, section("loss"), "loss"),
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "a config must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> Config:
    """Read a YAML config (or start from ``base``), apply ``key=value`` overrides, validate.

    An error names where the bad value came from: ``--set train.lr: ...`` for an override,
    ``<file>: train.lr: ...`` for a value of the file. ``sources`` names the option behind an
    override that the user did not type as ``--set``: ``{"loss.margin": "--grid loss.margin"}``
    makes a bad ``loss.margin`` ``--grid loss.margin: ...`` (the last override of a key is the
    one that counts, so it is the one blamed).
    """
    raw = dict(base or {})
    if path is not None:
        raw.update(read_yaml(path))
    given: list[str] = []
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
        given.append(key)
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        key = exc.key or ""
        matches = [k for k in given if key and (key == k or key.startswith((k + ".", k + "[")) or
                                                k.startswith(key + "."))]
        if matches:
            message = str(exc)
            label = (sources or {}).get(matches[-1])
            if label is not None:
                rest = message[len(key) + 2:] if message.startswith(key + ": ") else message
                raise ConfigError(f"{label}: {rest}", key=key) from None
            raise ConfigError(f"--set {message}" if message.startswith(key) else f"--set {key}: {message}",
                              key=key) from None
        if path is not None:
            raise ConfigError(f"{path}: {exc}", key=key or None) from None
        raise


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-data form (what goes into config.yaml and checkpoints)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
