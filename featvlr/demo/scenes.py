"""Scene sampling: a scene type, 2 to 5 objects of distinct categories and 1 or 2 relations.

A scene is a plain dict (JSON-ready)::

    {"scene": str, "objects": [{"category", "colour", "size"}], "relations": [[s, rel, o]]}
"""
from __future__ import annotations

import json

import numpy as np

from featvlr.demo.vocabulary import (
    CAT_COLOURS,
    CAT_GROUP,
    CATEGORIES,
    RELATION_TABLE,
    RELATIONS,
    SCENE_TABLE,
    SCENES,
    SIZES,
)

_N_OBJECTS = (2, 3, 4, 5)
_N_OBJECTS_P = (0.25, 0.35, 0.25, 0.15)
_SIZE_P = (0.25, 0.5, 0.25)
_UNLIKELY_WEIGHT = 0.06


def relation_ok(rel: str, subj: str, obj: str) -> bool:
    if subj == obj:
        return False
    _, subj_groups, obj_cats, _ = RELATION_TABLE[rel]
    if subj_groups is not None and CAT_GROUP[subj] not in subj_groups:
        return False
    return obj_cats is None or obj in obj_cats


def choice(rng: np.random.Generator, seq):
    return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]


def weighted(rng: np.random.Generator, weights) -> int:
    """Index drawn with probability proportional to ``weights`` (a list of floats)."""
    u = rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1


_SCENE_CAT_W = {sc: [1.0 if c in row[2] else _UNLIKELY_WEIGHT for c in CATEGORIES]
                for sc, row in SCENE_TABLE.items()}
_RELATION_W = [RELATION_TABLE[r][3] for r in RELATIONS]


def sample_category(rng: np.random.Generator, scene: str, exclude: list[str]) -> str:
    w = [0.0 if c in exclude else x for c, x in zip(CATEGORIES, _SCENE_CAT_W[scene])]
    return CATEGORIES[weighted(rng, w)]


def sample_object(rng: np.random.Generator, category: str) -> dict:
    return {"category": category,
            "colour": choice(rng, CAT_COLOURS[category]),
            "size": SIZES[weighted(rng, _SIZE_P)]}


def _sample_relations(rng: np.random.Generator, objects: list[dict]) -> list[list]:
    n = len(objects)
    want = 1 if n == 2 else 1 + int(rng.random() < 0.5)
    out: list[list] = []
    used_pairs: list[tuple[int, int]] = []
    for _ in range(40):
        if len(out) >= want:
            break
        rel = RELATIONS[weighted(rng, _RELATION_W)]
        s = int(rng.integers(n))
        o = (s + 1 + int(rng.integers(n - 1))) % n
        if (s, o) in used_pairs or (o, s) in used_pairs:
            continue
        if relation_ok(rel, objects[s]["category"], objects[o]["category"]):
            out.append([s, rel, o])
            used_pairs.append((s, o))
    if not out:  # "next to" fits any pair
        out.append([0, "next to", 1])
    return out


def sample_scene(rng: np.random.Generator) -> dict:
    scene = choice(rng, SCENES)
    n = _N_OBJECTS[weighted(rng, _N_OBJECTS_P)]
    cats: list[str] = []
    for _ in range(n):
        cats.append(sample_category(rng, scene, cats))
    objects = [sample_object(rng, c) for c in cats]
    return {"scene": scene, "objects": objects, "relations": _sample_relations(rng, objects)}


def scene_key(sc: dict) -> str:
    """Order-free identity of a scene (categories are distinct within a scene)."""
    objs = sc["objects"]
    return json.dumps([sc["scene"], sorted((o["category"], o["colour"], o["size"]) for o in objs),
                       sorted((objs[s]["category"], r, objs[o]["category"]) for s, r, o in sc["relations"])])
