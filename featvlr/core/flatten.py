"""Flat records of nested results and configs (for tables, logs and comparisons)."""
from __future__ import annotations

import json
from typing import Any


def flatten_numbers(d: dict[str, Any], prefix: str = "", *, sep: str = ".",
                    scalars_only: bool = False) -> dict[str, Any]:
    """Flatten nested dicts into one level, joining keys with ``sep``.

    ``{"loss": {"margin": 0.2}, "eval": {"ndcg_ks": [10, 20]}}`` gives
    ``{"loss.margin": 0.2, "eval.ndcg_ks": "[10, 20]"}``: a list becomes its JSON text, every
    other value is kept as it is. With ``scalars_only`` only numbers (bools included) and
    strings are kept; lists, None and other values are dropped (what a log line holds).

    Args:
        d: the nested mapping.
        prefix: put before every key (normally empty).
        sep: joins the keys of nested levels.
        scalars_only: keep only ``int``, ``float`` and ``str`` values.
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_numbers(v, key + sep, sep=sep, scalars_only=scalars_only))
        elif scalars_only:
            if isinstance(v, (int, float, str)):
                out[key] = v
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out
