"""Variants of a comparison and their short labels.

Runs whose configs differ only in the seed (and settings that do not change results, such
as progress bars or where rows live) form one *variant*. A variant's label is its method,
then only the settings a user changed: ``hrem``, ``vse lr=0.0003``.

A setting counts as a difference when two variants could both have it and hold different
values. It does not count when it differs only because the methods have different option
sets: a key that one method lacks (``model.pooling`` of ``vse`` next to ``hrem``), or a key
whose values are each method's own default. Among the keys that count, a variant shows a
key when its value is not the one most variants hold (``vse lr=0.0003`` next to ``vse`` and
``hrem`` at the config's ``lr``); without such a majority, or for a key the user asked for
(an ablation's grid keys, ``--group-by``), every variant shows it.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featvlr.core.flatten import flatten_numbers
from featvlr.report.runs import RunRecord

# Settings that never distinguish variants: the seed (variants are averaged over it), the
# name, and settings that do not change what a run computes.
IGNORED_KEYS = frozenset({
    "train.seed", "name", "train.progress", "train.log_every", "train.tensorboard", "train.device",
    "data.prefetch", "data.in_memory", "data.on_device", "eval.batch_size", "eval.chunk_elements",
})
_MISSING = object()


@dataclass
class Variant:
    """Runs that differ only in the seed: a label, the runs, and the representative config."""

    label: str
    runs: list[RunRecord]
    flat: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.flat.get("method", "?"))

    def value(self, key: str) -> Any:
        return self.flat.get(key)


def flat_config(run: RunRecord) -> dict[str, Any]:
    """The run's config as ``section.key -> value``; values naming the run's own folder
    (a stage's run, a teacher cache) are written relative to it, so seeds compare equal."""
    flat = flatten_numbers(run.config)
    own = {str(run.run_dir), run.run_dir.as_posix(), str(run.run_dir.resolve())}
    for k, v in flat.items():
        if isinstance(v, str):
            for prefix in sorted(own, key=len, reverse=True):
                if prefix and prefix in v:
                    flat[k] = v.replace(prefix, "<run>")
                    break
    return flat


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def method_defaults(method: str) -> dict[str, Any]:
    """The ``model.*`` and ``loss.*`` defaults of a registered method (empty if unknown)."""
    try:
        from featvlr.methods.registry import get_method

        cls = get_method(method)
    except Exception:  # noqa: BLE001 - an unknown method just has no known defaults
        return {}
    out: dict[str, Any] = {}
    for section, options in (("model", getattr(cls, "ModelOptions", None)),
                             ("loss", getattr(cls, "LossOptions", None))):
        try:
            out.update(flatten_numbers({section: dataclasses.asdict(options())}))
        except TypeError:  # no options class, or one with required fields
            continue
    return out


def differing_keys(flats: list[dict[str, Any]]) -> list[str]:
    """Keys that tell the variants apart (see the module docstring); ``method`` excluded."""
    keys = sorted({k for f in flats for k in f} - IGNORED_KEYS - {"method"})
    defaults = {m: method_defaults(m) for m in {str(f.get("method")) for f in flats}}
    out = []
    for k in keys:
        vals = [f.get(k, _MISSING) for f in flats]
        having = [(f, v) for f, v in zip(flats, vals) if v is not _MISSING]
        distinct = {_canon(v) for _, v in having}
        if len(distinct) <= 1:
            continue  # equal wherever present: absent keys only mean other option sets
        if k.split(".", 1)[0] in ("model", "loss"):
            own = [defaults[str(f.get("method"))].get(k, _MISSING) for f, _ in having]
            if all(d is not _MISSING and _canon(d) == _canon(v) for d, (_, v) in zip(own, having)):
                # each is its own method's default: do the methods disagree, or a user?
                by_method: dict[str, set[str]] = {}
                for f, v in having:
                    by_method.setdefault(str(f.get("method")), set()).add(_canon(v))
                if all(len(s) == 1 for s in by_method.values()):
                    continue
        out.append(k)
    return out


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value and (abs(value) < 1e-3 or abs(value) >= 1e6):
            mantissa, exp = f"{value:.6e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{value:g}"
    return str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """``loss.margin`` -> ``margin`` unless two keys share the last part."""
    last = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: k.rsplit(".", 1)[-1] if last[k.rsplit(".", 1)[-1]] == 1 else k for k in keys}


def group_variants(runs: list[RunRecord], *, group_by: str | None = None, always: list[str] | None = None,
                   labels: dict[str, str] | None = None) -> list[Variant]:
    """Runs grouped into labelled variants, in the order they first appear.

    Args:
        runs: the finished runs.
        group_by: group by this key's value alone (runs that differ elsewhere are pooled).
        always: keys every label shows (an ablation's grid keys).
        labels: ``{run folder or automatic label: name}`` overrides (``--label RUN=NAME``).
    """
    flats = [flat_config(r) for r in runs]
    groups: dict[str, Variant] = {}
    for run, flat in zip(runs, flats):
        if group_by is not None:
            ident = _canon(flat.get(group_by, _MISSING if group_by in flat else None))
        else:
            ident = _canon({k: v for k, v in flat.items() if k not in IGNORED_KEYS})
        groups.setdefault(ident, Variant("", [], flat)).runs.append(run)
    variants = list(groups.values())
    if group_by is not None:
        for v in variants:
            value = v.flat.get(group_by)
            v.label = (format_value(value) if group_by == "method"
                       else f"{short_keys([group_by])[group_by]}={format_value(value)}")
    else:
        _auto_labels(variants, always or [])
    _apply_overrides(variants, labels or {})
    seen: Counter[str] = Counter()
    for v in variants:
        seen[v.label] += 1
        if seen[v.label] > 1:
            v.label = f"{v.label} #{seen[v.label]}"
    return variants


def _auto_labels(variants: list[Variant], always: list[str]) -> None:
    flats = [v.flat for v in variants]
    keys = differing_keys(flats)
    shown_always = [k for k in always if k != "method" and k in keys]
    short = short_keys(keys)
    for k in keys:
        present = [_canon(f[k]) for f in flats if k in f]
        common, count = Counter(present).most_common(1)[0]
        majority = common if count * 2 > len(present) and k not in shown_always else None
        for v in variants:
            if k in v.flat and _canon(v.flat[k]) != majority:
                v.label += f" {short[k]}={format_value(v.flat[k])}"
    for v in variants:
        v.label = (v.method + v.label).strip()


def _apply_overrides(variants: list[Variant], labels: dict[str, str]) -> None:
    for target, name in labels.items():
        hit = [v for v in variants if v.label == target] or [
            v for v in variants if any(_same_path(r.run_dir, target) for r in v.runs)]
        if not hit:
            from featvlr.core.errors import ConfigError

            raise ConfigError(f"--label {target}={name}: no run folder or variant named {target!r} "
                              f"(variants: {', '.join(v.label for v in variants)})")
        for v in hit:
            v.label = name


def _same_path(a: Path, b: str) -> bool:
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def variant_of(variants: list[Variant], name: str | None) -> Variant | None:
    """The variant ``name`` means: a label, a run folder of it, or an ablation cell name
    (``loss.margin=0.1__method=vse``: every ``key=value`` part matches its config)."""
    if name is None:
        return None
    for v in variants:
        if v.label == name or any(_same_path(r.run_dir, name) for r in v.runs):
            return v
    parts = [p.split("=", 1) for p in name.split("__") if "=" in p]
    if parts:
        for v in variants:
            if all(format_value(v.flat.get(k)).lower() == val.lower() or str(v.flat.get(k)) == val
                   for k, val in parts):
                return v
    return None
