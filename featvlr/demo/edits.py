"""Edits of a scene that a caption states exactly (replace, colour, size, add, remove, scene),
each with the edit that undoes it."""
from __future__ import annotations

import numpy as np

from featvlr.demo.scenes import choice, relation_ok, sample_category, sample_object, weighted
from featvlr.demo.vocabulary import CAT_COLOURS, CAT_GROUP, CATEGORIES, SCENES, SIZES

_EDIT_TYPES = ("replace", "colour", "size", "add", "remove", "scene")
_EDIT_P = (0.28, 0.26, 0.1, 0.14, 0.14, 0.08)


def _copy_scene(sc: dict) -> dict:
    return {"scene": sc["scene"], "objects": [dict(o) for o in sc["objects"]],
            "relations": [list(r) for r in sc["relations"]]}


def apply_edit(sc: dict, op: dict) -> dict:
    out = _copy_scene(sc)
    kind = op["type"]
    if kind == "replace":
        out["objects"][op["object"]]["category"] = op["to"]
    elif kind in ("colour", "size"):
        out["objects"][op["object"]][kind] = op["to"]
    elif kind == "add":
        out["objects"].append(dict(op["new"]))
    elif kind == "remove":
        i = op["object"]
        del out["objects"][i]
        rels = []
        for s, rel, o in out["relations"]:
            if i in (s, o):
                continue
            rels.append([s - (s > i), rel, o - (o > i)])
        out["relations"] = rels
    else:
        out["scene"] = op["to"]
    return out


def propose_edit(rng: np.random.Generator, sc: dict) -> tuple[dict, dict] | None:
    """One random edit of ``sc`` that a caption states exactly, and its inverse, or None."""
    objs = sc["objects"]
    kind = _EDIT_TYPES[weighted(rng, _EDIT_P)]
    cats = [o["category"] for o in objs]
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    if kind == "replace":
        group = CAT_GROUP[obj["category"]]
        pool = [c for c in CATEGORIES if c not in cats and (CAT_GROUP[c] == group or rng.random() < 0.15)]
        pool = [c for c in pool if obj["colour"] in CAT_COLOURS[c]]
        if not pool:
            return None
        new = choice(rng, pool)
        for s, rel, o in sc["relations"]:
            if (s == i and not relation_ok(rel, new, cats[o])) or (o == i and not relation_ok(rel, cats[s], new)):
                return None
        op = {"type": "replace", "object": i, "to": new}
        inv = {"type": "replace", "object": i, "to": obj["category"]}
    elif kind == "colour":
        pool = [c for c in CAT_COLOURS[obj["category"]] if c != obj["colour"]]
        op = {"type": "colour", "object": i, "to": choice(rng, pool)}
        inv = {"type": "colour", "object": i, "to": obj["colour"]}
    elif kind == "size":
        pool = [s for s in SIZES if s != obj["size"]]
        op = {"type": "size", "object": i, "to": choice(rng, pool)}
        inv = {"type": "size", "object": i, "to": obj["size"]}
    elif kind == "add":
        if len(objs) >= 5:
            return None
        new = sample_object(rng, sample_category(rng, sc["scene"], cats))
        op = {"type": "add", "new": new}
        inv = {"type": "remove", "object": len(objs)}
    elif kind == "remove":
        if len(objs) <= 2 or any(i in (s, o) for s, _, o in sc["relations"]):
            return None  # keep 2 objects; only objects outside every relation, so "add" undoes it exactly
        op = {"type": "remove", "object": i}
        inv = {"type": "add", "new": dict(obj)}  # re-added at the end of the object list
    else:
        op = {"type": "scene", "to": choice(rng, [s for s in SCENES if s != sc["scene"]])}
        inv = {"type": "scene", "to": sc["scene"]}
    return op, inv
