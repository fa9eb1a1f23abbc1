"""The built-in demo dataset: a small synthetic world written in the layouts users already have.

``make_demo_dataset(out)`` writes, from one seed and byte for byte reproducibly:

- a SCAN/BUTD "precomp" dataset (``METHODS.md`` 1.1): ``{split}_ims.npy`` float32
  ``[N, R, D]`` region features, ``{split}_caps.txt`` (5 consecutive captions per image)
  and ``{split}_ids.txt`` for the splits ``train``, ``dev`` and ``test``;
- a composed-retrieval split in the CIRR layout (``METHODS.md`` 1.4) under ``cirr/``:
  ``captions/cap.rc2.{train,val,test1}.json``, ``image_splits/split.rc2.{...}.json``, and
  global image features ``image_features.npz`` (name -> ``[Dg]``) and
  ``image_features_aug.npz`` (name -> ``[K, Dg]`` augmented views);
- ``truth/``: the scene graphs behind every image and the edit behind every composed pair
  (for analysis; no loader needs them), ``README.txt`` and ``demo_meta.json``.

The world. Every image is a scene of a type (park, street, beach, ...) holding 2 to 5
objects of distinct categories (28 categories in 6 groups: people, animals, vehicles, small
things, furniture, plants), each with a colour and a size, and 1 or 2 relations between
them ("holding", "riding", "on", "next to", ...). Captions are English sentences built from
varied templates and synonyms; each mentions a subset of the scene, so the 5 captions of
one image overlap without being equal.

The visual side is deliberately the weaker, noisier modality: one region per detected
object (plus sometimes a second, noisier "part" region), background clutter elsewhere;
objects are missed by the "detector" (small ones more often), spurious regions of random
categories appear, attributes are only weakly visible, categories of a group share a
component, and everything passes through a fixed random ``tanh`` layer plus noise. The
composed split uses a cleaner, CLIP-like global vector per image (a noisy function of the
whole scene); a target differs from its reference by exactly the edit its caption states
("change the dog to a cat", "make the car red", "add a small ball", "remove the bench",
"move everything to a beach"), so a combiner can learn reference + text -> target.

Sizes are parameters (``DEMO_DEFAULTS``); generation takes about a second at the defaults.
Writing is atomic: the folder is built as ``<out>.partial`` and renamed when complete.

Example::

    from featvlr.demo import make_demo_dataset, demo_sources
    root = make_demo_dataset("data/demo", seed=0)
    src = demo_sources(root)   # precomp root, CIRR root, feature files
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featvlr.errors import ConfigError, InputError

DEMO_FORMAT = "featvlr-demo"
DEMO_FORMAT_VERSION = 1
META_NAME = "demo_meta.json"
PRECOMP_SPLITS = ("train", "dev", "test")
CIRR_SPLITS = ("train", "val", "test1")
CAPTIONS_PER_IMAGE = 5
SET_SIZE = 6  # CIRR img_set: the reference, the target and 4 more similar images
_FAMILY = 3  # composed sets per family of related scenes
_FAMILY_EDITS = 1  # edits from the family's prototype scene to each set's base

DEMO_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # precomp splits (images; captions are 5x)
    "n_train": 1500,
    "n_dev": 200,
    "n_test": 200,
    "n_regions": 12,
    "region_dim": 256,
    # composed split (CIRR layout)
    "composed": True,
    "n_cirr_train": 2000,  # triplets
    "n_cirr_val": 300,
    "n_cirr_test": 200,
    # triplets drawn from each 6-image set (at most 10: 5 edits x 2 directions); fewer per
    # set means more sets, so a larger gallery for the same number of triplets
    "cirr_pairs_per_set": {"train": 4, "val": 3, "test1": 3},
    "global_dim": 128,
    "n_aug": 4,
}

# ---------------------------------------------------------------------------------------
# The world: vocabulary tables (fixed) and latent vectors (drawn from the seed)
# ---------------------------------------------------------------------------------------

GROUPS = ("person", "animal", "vehicle", "thing", "furniture", "plant")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "orange", "pink")
SIZES = ("small", "medium", "large")  # "medium" is never named in text
ATTRIBUTES = COLOURS + ("small", "large")

_ALL = COLOURS
# name, group, nouns (repetition = preference), allowed colours
_CATEGORY_TABLE: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("man", "person", ("man", "man", "guy", "gentleman"), _ALL),
    ("woman", "person", ("woman", "woman", "lady"), _ALL),
    ("boy", "person", ("boy", "boy", "young boy", "kid"), _ALL),
    ("girl", "person", ("girl", "girl", "young girl", "kid"), _ALL),
    ("dog", "animal", ("dog", "dog", "puppy", "pup"), ("black", "white", "brown", "yellow")),
    ("cat", "animal", ("cat", "cat", "kitten", "kitty"), ("black", "white", "brown", "orange")),
    ("horse", "animal", ("horse", "horse", "pony"), ("black", "white", "brown")),
    ("bird", "animal", ("bird", "bird", "little bird"), ("red", "blue", "yellow", "black", "white")),
    ("car", "vehicle", ("car", "car", "vehicle", "automobile"), _ALL),
    ("bus", "vehicle", ("bus", "bus", "coach"), ("red", "blue", "green", "yellow", "white", "orange")),
    ("truck", "vehicle", ("truck", "truck", "lorry"), ("red", "blue", "green", "black", "white", "orange")),
    ("bicycle", "vehicle", ("bicycle", "bike", "bike"), _ALL),
    ("motorcycle", "vehicle", ("motorcycle", "motorbike", "motorcycle"), ("red", "blue", "black", "white", "orange")),
    ("boat", "vehicle", ("boat", "boat", "rowboat"), ("red", "blue", "green", "yellow", "white", "brown")),
    ("ball", "thing", ("ball", "ball"), _ALL),
    ("kite", "thing", ("kite",), _ALL),
    ("frisbee", "thing", ("frisbee", "frisbee", "flying disc"), _ALL),
    ("umbrella", "thing", ("umbrella", "umbrella", "parasol"), _ALL),
    ("cup", "thing", ("cup", "mug", "cup"), _ALL),
    ("bag", "thing", ("bag", "backpack", "bag"), _ALL),
    ("book", "thing", ("book",), _ALL),
    ("surfboard", "thing", ("surfboard", "surf board"), _ALL),
    ("table", "furniture", ("table", "table", "desk"), ("brown", "black", "white", "red", "blue", "green")),
    ("chair", "furniture", ("chair", "chair", "seat"), ("brown", "black", "white", "red", "blue", "green")),
    ("bench", "furniture", ("bench",), ("brown", "black", "white", "red", "blue", "green")),
    ("sofa", "furniture", ("sofa", "couch"), ("brown", "black", "white", "red", "blue", "green")),
    ("tree", "plant", ("tree", "tree"), ("green", "brown", "yellow", "orange")),
    ("flower", "plant", ("flower", "flower", "blossom"), ("red", "yellow", "pink", "white", "orange", "blue")),
)
CATEGORIES = tuple(row[0] for row in _CATEGORY_TABLE)
_CAT_INDEX = {name: i for i, name in enumerate(CATEGORIES)}
_CAT_GROUP = {row[0]: row[1] for row in _CATEGORY_TABLE}
_CAT_NOUNS = {row[0]: row[2] for row in _CATEGORY_TABLE}
_CAT_COLOURS = {row[0]: row[3] for row in _CATEGORY_TABLE}

_ANY = None
_SURFACES = ("table", "chair", "bench", "sofa")
_HOLDABLE = ("ball", "kite", "frisbee", "umbrella", "cup", "bag", "book", "surfboard", "cat", "bird")
_RIDEABLE = ("bicycle", "motorcycle", "horse", "boat", "surfboard")
_SHELTERS = ("tree", "umbrella", "table")
_SMALL_GROUPS = ("person", "animal", "thing")
# name -> (phrases, subject groups or None, object categories or None, sampling weight)
_RELATION_TABLE: dict[str, tuple[tuple[str, ...], Any, Any, float]] = {
    "next to": (("next to", "beside", "near", "by"), _ANY, _ANY, 3.0),
    "holding": (("holding", "carrying"), ("person",), _HOLDABLE, 2.0),
    "riding": (("riding", "riding on"), ("person",), _RIDEABLE, 1.5),
    "on": (("on", "on top of"), _SMALL_GROUPS, _SURFACES, 1.5),
    "behind": (("behind", "in back of"), _ANY, _ANY, 1.0),
    "in front of": (("in front of",), _ANY, _ANY, 1.0),
    "under": (("under", "beneath", "underneath"), _SMALL_GROUPS, _SHELTERS, 1.0),
}
RELATIONS = tuple(_RELATION_TABLE)

# name -> (phrases "in the X", nouns, likely categories)
_SCENE_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "park": (("in a park", "at the park", "in the park"), ("park", "park"),
             ("man", "woman", "boy", "girl", "dog", "bird", "bicycle", "ball", "kite", "frisbee",
              "bench", "tree", "flower", "umbrella", "bag")),
    "street": (("on a street", "on a city street", "in the street"), ("street", "city street"),
               ("man", "woman", "car", "bus", "truck", "bicycle", "motorcycle", "dog", "bag",
                "umbrella", "tree", "bench")),
    "beach": (("at the beach", "on the beach", "on the sand"), ("beach", "beach"),
              ("man", "woman", "boy", "girl", "dog", "bird", "boat", "ball", "frisbee", "kite",
               "surfboard", "umbrella", "chair", "bag")),
    "kitchen": (("in a kitchen", "in the kitchen"), ("kitchen", "kitchen"),
                ("man", "woman", "girl", "cat", "cup", "table", "chair", "book", "flower", "bag")),
    "living room": (("in a living room", "indoors", "inside a room"), ("living room", "room"),
                    ("man", "woman", "boy", "girl", "cat", "dog", "sofa", "table", "chair", "book",
                     "cup")),
    "field": (("in a field", "in a grassy field", "on the grass"), ("field", "meadow"),
              ("horse", "dog", "man", "girl", "boy", "tree", "flower", "bird", "kite", "ball",
               "truck")),
}
SCENES = tuple(_SCENE_TABLE)

_N_OBJECTS = (2, 3, 4, 5)
_N_OBJECTS_P = (0.25, 0.35, 0.25, 0.15)
_SIZE_P = (0.25, 0.5, 0.25)
_UNLIKELY_WEIGHT = 0.06

# Strength of each factor. Visual (precomp regions): attributes weak, noise strong.
_LATENT_DIM = 64
_V = {
    "group": 0.55, "own": 0.85,          # category prototype = 0.55 group + 0.85 own, normalised
    "colour": 0.30, "size": 0.20, "role": 0.15, "scene_obj": 0.20,
    "noise": 0.75,                       # latent noise norm of an object region
    "part_scale": 0.8, "part_noise": 1.0,
    "clutter_scene": 0.5, "clutter_noise": 1.0,
    "spurious_p": 0.15, "spurious_scale": 0.6,
    "gain": 1.6, "bias": 0.2, "obs_noise": 0.35,
    "p_detect": {"small": 0.6, "medium": 0.8, "large": 0.92},
    "p_part": 0.4,
}
# Composed (global, CLIP-like): cleaner, attributes well visible.
_G = {
    "colour": 0.8, "size": 0.55, "role": 0.25, "scene": 0.8,
    "noise": 0.8, "gain": 0.9, "bias": 0.1, "obs_noise": 0.03,
    "aug_drop_p": 0.5, "aug_noise": 0.15, "aug_obs_noise": 0.02,
}


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class _World:
    """Latent vectors of the world and the fixed mixing layers (all from the seed)."""

    category: np.ndarray   # [C, L]
    colour: np.ndarray     # [9, L]
    size: np.ndarray       # [3, L] (medium = 0)
    role_subj: np.ndarray  # [n_rel, L]
    role_obj: np.ndarray   # [n_rel, L]
    scene: np.ndarray      # [n_scene, L]
    w_region: np.ndarray   # [L, D]
    b_region: np.ndarray   # [D]
    w_global: np.ndarray   # [L, Dg]
    b_global: np.ndarray   # [Dg]


def _make_world(rng: np.random.Generator, region_dim: int, global_dim: int) -> _World:
    L = _LATENT_DIM
    group = _unit_rows(rng, len(GROUPS), L)
    own = _unit_rows(rng, len(CATEGORIES), L)
    gidx = np.array([GROUPS.index(_CAT_GROUP[c]) for c in CATEGORIES])
    cat = _V["group"] * group[gidx] + _V["own"] * own
    cat /= np.linalg.norm(cat, axis=1, keepdims=True)
    size = np.zeros((3, L))
    size[[0, 2]] = _unit_rows(rng, 2, L)
    return _World(
        category=cat,
        colour=_unit_rows(rng, len(COLOURS), L),
        size=size,
        role_subj=_unit_rows(rng, len(RELATIONS), L),
        role_obj=_unit_rows(rng, len(RELATIONS), L),
        scene=_unit_rows(rng, len(SCENES), L),
        w_region=rng.standard_normal((L, region_dim)) / math.sqrt(L),
        b_region=rng.standard_normal(region_dim) * _V["bias"],
        w_global=rng.standard_normal((L, global_dim)) / math.sqrt(L),
        b_global=rng.standard_normal(global_dim) * _G["bias"],
    )


# ---------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------
# A scene is a plain dict (JSON-ready):
#   {"scene": str, "objects": [{"category", "colour", "size"}], "relations": [[s, rel, o]]}


def _relation_ok(rel: str, subj: str, obj: str) -> bool:
    if subj == obj:
        return False
    _, subj_groups, obj_cats, _ = _RELATION_TABLE[rel]
    if subj_groups is not None and _CAT_GROUP[subj] not in subj_groups:
        return False
    return obj_cats is None or obj in obj_cats


def _choice(rng: np.random.Generator, seq):
    return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]


def _weighted(rng: np.random.Generator, weights) -> int:
    """Index drawn with probability proportional to ``weights`` (a list of floats)."""
    u = rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1


_SCENE_CAT_W = {sc: [1.0 if c in row[2] else _UNLIKELY_WEIGHT for c in CATEGORIES]
                for sc, row in _SCENE_TABLE.items()}
_RELATION_W = [_RELATION_TABLE[r][3] for r in RELATIONS]


def _sample_category(rng: np.random.Generator, scene: str, exclude: list[str]) -> str:
    w = [0.0 if c in exclude else x for c, x in zip(CATEGORIES, _SCENE_CAT_W[scene])]
    return CATEGORIES[_weighted(rng, w)]


def _sample_object(rng: np.random.Generator, category: str) -> dict:
    return {"category": category,
            "colour": _choice(rng, _CAT_COLOURS[category]),
            "size": SIZES[_weighted(rng, _SIZE_P)]}


def _sample_relations(rng: np.random.Generator, objects: list[dict]) -> list[list]:
    n = len(objects)
    want = 1 if n == 2 else 1 + int(rng.random() < 0.5)
    out: list[list] = []
    used_pairs: list[tuple[int, int]] = []
    for _ in range(40):
        if len(out) >= want:
            break
        rel = RELATIONS[_weighted(rng, _RELATION_W)]
        s = int(rng.integers(n))
        o = (s + 1 + int(rng.integers(n - 1))) % n
        if (s, o) in used_pairs or (o, s) in used_pairs:
            continue
        if _relation_ok(rel, objects[s]["category"], objects[o]["category"]):
            out.append([s, rel, o])
            used_pairs.append((s, o))
    if not out:  # "next to" fits any pair
        out.append([0, "next to", 1])
    return out


def _sample_scene(rng: np.random.Generator) -> dict:
    scene = _choice(rng, SCENES)
    n = _N_OBJECTS[_weighted(rng, _N_OBJECTS_P)]
    cats: list[str] = []
    for _ in range(n):
        cats.append(_sample_category(rng, scene, cats))
    objects = [_sample_object(rng, c) for c in cats]
    return {"scene": scene, "objects": objects, "relations": _sample_relations(rng, objects)}


def _scene_key(sc: dict) -> str:
    """Order-free identity of a scene (categories are distinct within a scene)."""
    objs = sc["objects"]
    return json.dumps([sc["scene"], sorted((o["category"], o["colour"], o["size"]) for o in objs),
                       sorted((objs[s]["category"], r, objs[o]["category"]) for s, r, o in sc["relations"])])


# ---------------------------------------------------------------------------------------
# Text: captions of scenes, captions of edits
# ---------------------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(rng: np.random.Generator, obj: dict) -> str:
    person = _CAT_GROUP[obj["category"]] == "person"
    if obj["size"] == "small":
        return _choice(rng, ("short", "small") if person else ("small", "little", "small"))
    return _choice(rng, ("tall", "big") if person else ("large", "big", "large"))


def _noun_phrase(rng: np.random.Generator, obj: dict, *, p_colour: float = 0.5, p_size: float = 0.35,
                 force: bool = False) -> str:
    """'a small red dog', 'a tall man in a blue shirt' (indefinite)."""
    noun = _choice(rng, _CAT_NOUNS[obj["category"]])
    person = _CAT_GROUP[obj["category"]] == "person"
    use_colour = force or rng.random() < p_colour
    use_size = obj["size"] != "medium" and (force or rng.random() < p_size)
    if use_size and noun.startswith(("young", "little")):
        noun = obj["category"]
    size = _size_word(rng, obj) + " " if use_size else ""
    colour = obj["colour"]
    if person:
        phrase = _article(size + noun)
        if use_colour:
            phrase += " " + _choice(rng, (f"in {colour}", f"in a {colour} shirt", f"wearing {colour}",
                                          f"dressed in {colour}", f"in a {colour} jacket"))
        return phrase
    return _article(size + (colour + " " if use_colour else "") + noun)


def _the(rng: np.random.Generator, obj: dict) -> str:
    return _choice(rng, _CAT_NOUNS[obj["category"]])


def _rel_phrase(rng: np.random.Generator, rel: str, subj: dict) -> str:
    phrases = _RELATION_TABLE[rel][0]
    if rel == "on" and _CAT_GROUP[subj["category"]] in ("person", "animal") and rng.random() < 0.5:
        return "sitting on"
    return _choice(rng, phrases)


def _capitalise(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _caption(rng: np.random.Generator, sc: dict) -> str:
    objs = sc["objects"]
    where = _choice(rng, _SCENE_TABLE[sc["scene"]][0])
    place = _choice(rng, _SCENE_TABLE[sc["scene"]][1])
    if sc["relations"] and rng.random() < 0.6:
        s, rel, o = sc["relations"][int(rng.integers(len(sc["relations"])))]
        S, O = _noun_phrase(rng, objs[s]), _noun_phrase(rng, objs[o])
        R = _rel_phrase(rng, rel, objs[s])
        others = [i for i in range(len(objs)) if i not in (s, o)]
        X = _noun_phrase(rng, objs[_choice(rng, others)], p_colour=0.3, p_size=0.1) if others else None
        verb = "is " if rel != "riding" else _choice(rng, ("is ", ""))
        t = int(rng.integers(8 if X else 6))
        return _capitalise([
            f"{S} {R} {O}",
            f"there is {S} {R} {O}",
            f"{S} {verb}{R} {O}",
            f"{S} {R} {O} {where}",
            f"a photo of {S} {R} {O}",
            f"{where}, {S} {verb}{R} {O}",
            f"{S} {R} {O} with {X} nearby",
            f"{S} {R} {O} and {X} in the background",
        ][t])
    k = min(len(objs), 1 + _weighted(rng, (0.3, 0.45, 0.25)))
    first = 0 if rng.random() < 0.7 else int(rng.integers(len(objs)))
    rest = [i for i in range(len(objs)) if i != first]
    picked = [first] + [rest[int(j)] for j in rng.permutation(len(rest))[: k - 1]]
    nps = [_noun_phrase(rng, objs[i]) for i in picked]
    listed = nps[0] if k == 1 else (", ".join(nps[:-1]) + " and " + nps[-1])
    t = int(rng.integers(6))
    return _capitalise([
        f"{listed} {where}",
        f"a {place} with {listed}",
        f"{listed} can be seen {where}",
        f"a {place} scene showing {listed}",
        f"there is {listed} {where}",
        f"an image of {listed}",
    ][t])


def _captions(rng: np.random.Generator, sc: dict) -> list[str]:
    caps: list[str] = []
    for _ in range(CAPTIONS_PER_IMAGE):
        cap = _caption(rng, sc)
        for _retry in range(5):
            if cap not in caps:
                break
            cap = _caption(rng, sc)
        caps.append(cap)
    return caps


def _edit_caption(rng: np.random.Generator, op: dict, before: dict) -> str:
    kind = op["type"]
    if kind == "replace":
        old = _the(rng, before["objects"][op["object"]])
        new = _article(_choice(rng, _CAT_NOUNS[op["to"]]))
        t = _choice(rng, (f"change the {old} to {new}", f"replace the {old} with {new}",
                          f"swap the {old} for {new}", f"the {old} should be {new} instead",
                          f"turn the {old} into {new}", f"{new} instead of the {old}"))
    elif kind == "colour":
        obj = before["objects"][op["object"]]
        n, c = _the(rng, obj), op["to"]
        opts = [f"make the {n} {c}", f"change the colour of the {n} to {c}", f"the {n} should be {c}",
                f"paint the {n} {c}"]
        if _CAT_GROUP[obj["category"]] == "person":
            opts = [f"dress the {n} in {c}", f"the {n} should wear {c}", f"make the {n} wear {c}",
                    f"put the {n} in {c} clothes"]
        t = _choice(rng, opts)
    elif kind == "size":
        n = _the(rng, before["objects"][op["object"]])
        t = _choice(rng, {
            "large": (f"make the {n} bigger", f"make the {n} larger", f"enlarge the {n}",
                      f"the {n} should be big"),
            "small": (f"make the {n} smaller", f"shrink the {n}", f"the {n} should be small",
                      f"make the {n} little"),
            "medium": (f"make the {n} normal sized", f"the {n} should be of medium size",
                       f"give the {n} an ordinary size"),
        }[op["to"]])
    elif kind == "add":
        np_ = _noun_phrase(rng, op["new"], force=True)
        t = _choice(rng, (f"add {np_}", f"put {np_} in the picture", f"include {np_}",
                          f"there should also be {np_}", f"add {np_} to the scene"))
    elif kind == "remove":
        n = _the(rng, before["objects"][op["object"]])
        t = _choice(rng, (f"remove the {n}", f"take away the {n}", f"get rid of the {n}",
                          f"delete the {n}", f"the {n} should be gone", f"the same but without the {n}"))
    else:  # scene
        where = _choice(rng, _SCENE_TABLE[op["to"]][0])
        place = _choice(rng, _SCENE_TABLE[op["to"]][1])
        t = _choice(rng, (f"change the setting to {_article(place)}", f"move everything to the {place}",
                          f"put it all {where}", f"the background should be {_article(place)}"))
    return _capitalise(t)


# ---------------------------------------------------------------------------------------
# Edits (composed split)
# ---------------------------------------------------------------------------------------

_EDIT_TYPES = ("replace", "colour", "size", "add", "remove", "scene")
_EDIT_P = (0.28, 0.26, 0.1, 0.14, 0.14, 0.08)


def _copy_scene(sc: dict) -> dict:
    return {"scene": sc["scene"], "objects": [dict(o) for o in sc["objects"]],
            "relations": [list(r) for r in sc["relations"]]}


def _apply(sc: dict, op: dict) -> dict:
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


def _propose_edit(rng: np.random.Generator, sc: dict) -> tuple[dict, dict] | None:
    """One random edit of ``sc`` that a caption states exactly, and its inverse, or None."""
    objs = sc["objects"]
    kind = _EDIT_TYPES[_weighted(rng, _EDIT_P)]
    cats = [o["category"] for o in objs]
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    if kind == "replace":
        group = _CAT_GROUP[obj["category"]]
        pool = [c for c in CATEGORIES if c not in cats and (_CAT_GROUP[c] == group or rng.random() < 0.15)]
        pool = [c for c in pool if obj["colour"] in _CAT_COLOURS[c]]
        if not pool:
            return None
        new = _choice(rng, pool)
        for s, rel, o in sc["relations"]:
            if (s == i and not _relation_ok(rel, new, cats[o])) or (o == i and not _relation_ok(rel, cats[s], new)):
                return None
        op = {"type": "replace", "object": i, "to": new}
        inv = {"type": "replace", "object": i, "to": obj["category"]}
    elif kind == "colour":
        pool = [c for c in _CAT_COLOURS[obj["category"]] if c != obj["colour"]]
        op = {"type": "colour", "object": i, "to": _choice(rng, pool)}
        inv = {"type": "colour", "object": i, "to": obj["colour"]}
    elif kind == "size":
        pool = [s for s in SIZES if s != obj["size"]]
        op = {"type": "size", "object": i, "to": _choice(rng, pool)}
        inv = {"type": "size", "object": i, "to": obj["size"]}
    elif kind == "add":
        if len(objs) >= 5:
            return None
        new = _sample_object(rng, _sample_category(rng, sc["scene"], cats))
        op = {"type": "add", "new": new}
        inv = {"type": "remove", "object": len(objs)}
    elif kind == "remove":
        if len(objs) <= 2 or any(i in (s, o) for s, _, o in sc["relations"]):
            return None  # keep 2 objects; only objects outside every relation, so "add" undoes it exactly
        op = {"type": "remove", "object": i}
        inv = {"type": "add", "new": dict(obj)}  # re-added at the end of the object list
    else:
        op = {"type": "scene", "to": _choice(rng, [s for s in SCENES if s != sc["scene"]])}
        inv = {"type": "scene", "to": sc["scene"]}
    return op, inv


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------


def _object_latent(w: _World, sc: dict, i: int, colour: float, size: float, role: float) -> np.ndarray:
    obj = sc["objects"][i]
    z = w.category[_CAT_INDEX[obj["category"]]] + colour * w.colour[COLOURS.index(obj["colour"])] \
        + size * w.size[SIZES.index(obj["size"])]
    for s, rel, o in sc["relations"]:
        r = RELATIONS.index(rel)
        if s == i:
            z = z + role * w.role_subj[r]
        if o == i:
            z = z + role * w.role_obj[r]
    return z


def _regions(rng: np.random.Generator, w: _World, scenes: list[dict], n_regions: int) -> tuple[np.ndarray, list]:
    """Region features ``[N, R, D]`` and, per image, the object index of each region (-1: clutter)."""
    L = _LATENT_DIM
    N = len(scenes)
    noise = rng.standard_normal((N, n_regions, L)) / math.sqrt(L)
    Z = np.empty((N, n_regions, L))
    owners: list[list[int]] = []
    for n, sc in enumerate(scenes):
        sv = w.scene[SCENES.index(sc["scene"])]
        slots: list[tuple[int, np.ndarray]] = []
        for i, obj in enumerate(sc["objects"]):
            if rng.random() >= _V["p_detect"][obj["size"]] or len(slots) >= n_regions:
                continue
            z = _object_latent(w, sc, i, _V["colour"], _V["size"], _V["role"]) + _V["scene_obj"] * sv
            slots.append((i, z + _V["noise"] * noise[n, len(slots)]))
            if rng.random() < _V["p_part"] and len(slots) < n_regions:
                slots.append((i, _V["part_scale"] * z + _V["part_noise"] * noise[n, len(slots)]))
        while len(slots) < n_regions:
            z = _V["clutter_scene"] * sv + _V["clutter_noise"] * noise[n, len(slots)]
            if rng.random() < _V["spurious_p"]:
                z = z + _V["spurious_scale"] * w.category[int(rng.integers(len(CATEGORIES)))]
            slots.append((-1, z))
        order = rng.permutation(n_regions)
        Z[n] = np.stack([slots[j][1] for j in order])
        owners.append([slots[j][0] for j in order])
    X = Z.reshape(-1, L) @ w.w_region
    X *= _V["gain"]
    X += w.b_region
    np.tanh(X, out=X)
    X += _V["obs_noise"] * rng.standard_normal(X.shape)
    return X.reshape(N, n_regions, -1).astype(np.float32), owners


def _global_latent(w: _World, sc: dict) -> np.ndarray:
    z = _G["scene"] * w.scene[SCENES.index(sc["scene"])]
    for i in range(len(sc["objects"])):
        z = z + _object_latent(w, sc, i, _G["colour"], _G["size"], _G["role"])
    return z


def _global_features(rng: np.random.Generator, w: _World, scenes: list[dict], n_aug: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-like global vectors ``[N, Dg]`` and ``n_aug`` augmented views ``[N, K, Dg]``."""
    L = _LATENT_DIM
    base = np.stack([_global_latent(w, sc) for sc in scenes])
    H = base + (_G["noise"] / math.sqrt(L)) * rng.standard_normal(base.shape)
    G = np.tanh(_G["gain"] * (H @ w.w_global) + w.b_global)
    G += _G["obs_noise"] * rng.standard_normal(G.shape)
    Hk = np.repeat(H[:, None, :], max(n_aug, 0), axis=1)
    for n, sc in enumerate(scenes):
        for k in range(n_aug):
            if rng.random() < _G["aug_drop_p"]:  # weaken one object's component
                i = int(rng.integers(len(sc["objects"])))
                obj = _object_latent(w, sc, i, _G["colour"], _G["size"], _G["role"])
                Hk[n, k] -= rng.uniform(0.5, 1.0) * obj
    Hk += (_G["aug_noise"] / math.sqrt(L)) * rng.standard_normal(Hk.shape)
    A = np.tanh(_G["gain"] * (Hk @ w.w_global) + w.b_global)
    A += _G["aug_obs_noise"] * rng.standard_normal(A.shape)
    return G.astype(np.float32), A.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Composed split
# ---------------------------------------------------------------------------------------


def _edited_base(rng: np.random.Generator, proto: dict, n_edits: int) -> dict:
    """``proto`` after ``n_edits`` random edits (a sibling of the other sets of its family)."""
    sc = proto
    for _ in range(n_edits):
        for _try in range(20):
            prop = _propose_edit(rng, sc)
            if prop is not None:
                sc = _apply(sc, prop[0])
                break
    return sc


def _make_set(rng: np.random.Generator, base: dict, taken: dict[str, bool]
              ) -> list[tuple[dict, dict, dict]] | None:
    """5 one-edit variants of ``base``: [(variant, op base->variant, inverse op)], or None.

    No scene in ``taken`` (the scenes already in the split) is used again; the new ones are
    added to it, so no two images of a gallery show the same scene."""
    if _scene_key(base) in taken:
        return None
    seen = [_scene_key(base)]
    used: list[tuple] = []
    variants: list[tuple[dict, dict, dict]] = []
    for _ in range(60):
        prop = _propose_edit(rng, base)
        if prop is None:
            continue
        op, inv = prop
        target_key = (op["type"], op.get("object", -1))  # at most one edit per (type, object)
        new = _apply(base, op)
        key = _scene_key(new)
        if key in seen or key in taken or target_key in used:
            continue
        seen.append(key)
        used.append(target_key)
        variants.append((new, op, inv))
        if len(variants) == SET_SIZE - 1:
            taken.update((k, True) for k in seen)
            return variants
    return None


@dataclass
class _ComposedSplit:
    names: list[str]
    scenes: list[dict]
    triplets: list[dict]   # CIRR records
    edits: list[dict]      # {pairid, reference, target, edit}


def _composed_split(rng: np.random.Generator, split: str, n_triplets: int, per_set: int,
                    pairid_start: int, set_id_start: int) -> _ComposedSplit:
    per_set = max(1, min(int(per_set), 2 * (SET_SIZE - 1)))
    n_sets = max(1, math.ceil(n_triplets / per_set))
    names: list[str] = []
    scenes: list[dict] = []
    records: list[tuple[dict, dict]] = []
    proto = _sample_scene(rng)
    taken: dict[str, bool] = {}
    for k in range(n_sets):
        set_id = set_id_start + k
        # sets come in families of _FAMILY sets whose bases are a few edits from one
        # prototype scene, so a gallery holds near misses outside the reference's own set
        if k % _FAMILY == 0:
            proto = _sample_scene(rng)
        for attempt in range(1000):
            if attempt % 20 == 19:  # this family's neighbourhood is used up
                proto = _sample_scene(rng)
            base = _edited_base(rng, proto, _FAMILY_EDITS)
            variants = _make_set(rng, base, taken)
            if variants is not None:
                break
        else:  # pragma: no cover - needs a world far smaller than this one
            raise RuntimeError("demo: could not build distinct composed sets")
        members_sc = [base] + [v[0] for v in variants]
        order = rng.permutation(SET_SIZE)  # member j of the set is members_sc[order[j]]
        slot = {int(order[j]): j for j in range(SET_SIZE)}
        prefix = "dev" if split == "val" else split  # CIRR names val images dev-*
        member_names = [f"{prefix}-{set_id}-{j}-img{j % 2}" for j in range(SET_SIZE)]
        names += member_names
        scenes += [members_sc[int(order[j])] for j in range(SET_SIZE)]
        pairs = []
        for v, (_, op, inv) in enumerate(variants, start=1):
            pairs.append((0, v, op))    # base -> variant
            pairs.append((v, 0, inv))   # variant -> base
        chosen = rng.permutation(len(pairs))[:per_set]
        for c in sorted(int(x) for x in chosen):
            ref, tgt, op = pairs[c]
            ref_j, tgt_j = slot[ref], slot[tgt]
            caption = _edit_caption(rng, op, members_sc[ref])
            rec = {
                "reference": member_names[ref_j],
                "target_hard": member_names[tgt_j],
                "target_soft": {member_names[tgt_j]: 1.0},
                "caption": caption,
                "img_set": {"id": set_id, "members": member_names,
                            "reference_rank": ref_j, "target_rank": tgt_j},
            }
            records.append((rec, op))
    records = [records[int(i)] for i in rng.permutation(len(records))[:n_triplets]]
    triplets, edits = [], []
    for r, (rec, op) in enumerate(records):
        pid = pairid_start + r
        edits.append({"pairid": pid, "reference": rec["reference"], "target": rec["target_hard"], "edit": op})
        if split == "test1":
            triplets.append({"pairid": pid, "reference": rec["reference"], "caption": rec["caption"],
                             "img_set": {"id": rec["img_set"]["id"], "members": rec["img_set"]["members"],
                                         "reference_rank": rec["img_set"]["reference_rank"]}})
        else:
            triplets.append({"pairid": pid, **rec})
    return _ComposedSplit(names, scenes, triplets, edits)


def _relpath(split: str, name: str, set_id: int) -> str:
    if split == "train":
        return f"./train/{set_id % 100}/{name}.png"
    return f"./{'dev' if split == 'val' else split}/{name}.png"


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _dump_json(path: Path, obj, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without timestamps: the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def _check_params(p: dict) -> None:
    for key in ("n_train", "n_dev", "n_test", "n_cirr_train", "n_cirr_val", "n_cirr_test"):
        if not isinstance(p[key], (int, np.integer)) or p[key] < 1:
            raise ConfigError(f"demo: {key} must be a positive integer, got {p[key]!r}")
    if not isinstance(p["n_regions"], (int, np.integer)) or p["n_regions"] < 2:
        raise ConfigError(f"demo: n_regions must be an integer >= 2, got {p['n_regions']!r}")
    for key in ("region_dim", "global_dim"):
        if not isinstance(p[key], (int, np.integer)) or p[key] < 8:
            raise ConfigError(f"demo: {key} must be an integer >= 8, got {p[key]!r}")
    if not isinstance(p["n_aug"], (int, np.integer)) or p["n_aug"] < 0:
        raise ConfigError(f"demo: n_aug must be a non-negative integer, got {p['n_aug']!r}")
    if not isinstance(p["seed"], (int, np.integer)) or p["seed"] < 0:
        raise ConfigError(f"demo: seed must be a non-negative integer, got {p['seed']!r}")
    pps = p["cirr_pairs_per_set"]
    if not isinstance(pps, dict) or set(pps) != set(CIRR_SPLITS) or \
            any(not isinstance(v, (int, np.integer)) or not 1 <= v <= 2 * (SET_SIZE - 1) for v in pps.values()):
        raise ConfigError(f"demo: cirr_pairs_per_set must map {list(CIRR_SPLITS)} to integers in 1..10, got {pps!r}")


def _generate(root: Path, p: dict) -> dict:
    """Write every file of the dataset into ``root``; return the sizes for the metadata."""
    ss = np.random.SeedSequence([int(p["seed"]), 0x5EED_DE30])
    world_ss, precomp_ss, cirr_ss = ss.spawn(3)
    w = _make_world(np.random.default_rng(world_ss), p["region_dim"], p["global_dim"])
    truth = root / "truth"
    truth.mkdir()
    sizes: dict[str, Any] = {"precomp": {}, "cirr": {}}
    next_id = 1
    for split, split_ss in zip(PRECOMP_SPLITS, precomp_ss.spawn(len(PRECOMP_SPLITS))):
        n = int(p[f"n_{split}"])
        scene_rng, text_rng, vis_rng = (np.random.default_rng(s) for s in split_ss.spawn(3))
        scenes = [_sample_scene(scene_rng) for _ in range(n)]
        caps = [c for sc in scenes for c in _captions(text_rng, sc)]
        ims, owners = _regions(vis_rng, w, scenes, int(p["n_regions"]))
        ids = list(range(next_id, next_id + n))
        next_id += n
        np.save(root / f"{split}_ims.npy", ims)
        _write_lines(root / f"{split}_caps.txt", caps)
        _write_lines(root / f"{split}_ids.txt", [str(i) for i in ids])
        _dump_json(truth / f"{split}_scenes.json",
                   [{"id": i, **sc, "regions": own} for i, sc, own in zip(ids, scenes, owners)], indent=None)
        sizes["precomp"][split] = {"images": n, "captions": len(caps)}

    if p["composed"]:
        cirr = root / "cirr"
        (cirr / "captions").mkdir(parents=True)
        (cirr / "image_splits").mkdir()
        split_ss = cirr_ss.spawn(len(CIRR_SPLITS) + 1)
        all_names: list[str] = []
        all_scenes: list[dict] = []
        pairid, set_id = 0, 0
        n_key = {"train": "n_cirr_train", "val": "n_cirr_val", "test1": "n_cirr_test"}
        for split, s_ss in zip(CIRR_SPLITS, split_ss):
            cs = _composed_split(np.random.default_rng(s_ss), split, int(p[n_key[split]]),
                                 int(p["cirr_pairs_per_set"][split]), pairid, set_id)
            pairid += len(cs.triplets)
            n_sets = len(cs.names) // SET_SIZE
            _dump_json(cirr / "captions" / f"cap.rc2.{split}.json", cs.triplets)
            gallery = {name: _relpath(split, name, set_id + j // SET_SIZE) for j, name in enumerate(cs.names)}
            _dump_json(cirr / "image_splits" / f"split.rc2.{split}.json", gallery)
            _dump_json(truth / f"cirr_{split}_edits.json", cs.edits, indent=None)
            set_id += n_sets
            all_names += cs.names
            all_scenes += cs.scenes
            sizes["cirr"][split] = {"triplets": len(cs.triplets), "images": len(cs.names), "sets": n_sets}
        G, A = _global_features(np.random.default_rng(split_ss[-1]), w, all_scenes, int(p["n_aug"]))
        _save_npz(cirr / "image_features.npz", dict(zip(all_names, G)))
        if p["n_aug"] > 0:
            _save_npz(cirr / "image_features_aug.npz", dict(zip(all_names, A)))
        _dump_json(truth / "cirr_scenes.json", dict(zip(all_names, all_scenes)), indent=None)
    return sizes


def _readme(p: dict, sizes: dict) -> str:
    pre = sizes["precomp"]
    lines = [
        "featvlr demo dataset",
        "====================",
        "",
        "A small synthetic vision-language dataset written by featvlr.demo.make_demo_dataset",
        f"(seed {p['seed']}). The same parameters and seed always give the same bytes.",
        "",
        "World: scenes of one type (" + ", ".join(SCENES) + ")",
        f"holding 2-5 objects of distinct categories ({len(CATEGORIES)} categories: "
        + ", ".join(CATEGORIES) + "),",
        "each with a colour (" + ", ".join(COLOURS) + ") and a size (small, medium, large),",
        "and 1-2 relations (" + ", ".join(RELATIONS) + ").",
        "",
        "Precomp layout (SCAN/BUTD; read with featvlr.sources.precomp.extract_precomp):",
    ]
    for split in PRECOMP_SPLITS:
        lines.append(f"  {split}_ims.npy   float32 [{pre[split]['images']}, {p['n_regions']}, {p['region_dim']}]"
                     f"  region features")
        lines.append(f"  {split}_caps.txt  {pre[split]['captions']} captions, 5 consecutive lines per image")
        lines.append(f"  {split}_ids.txt   {pre[split]['images']} image ids, one per line")
    lines += [
        "",
        "  Regions: one per detected object (sometimes a second, noisier part region), the rest",
        "  background clutter; objects are missed (small ones more often), spurious regions occur,",
        "  colour and size are weakly visible, and features pass through a fixed random tanh layer",
        "  plus noise. The captions are the more informative modality by design.",
        "",
    ]
    if p["composed"]:
        lines += ["Composed split, CIRR layout, under cirr/ (read with",
                  "featvlr.sources.composed.extract_composed('cirr', ...)):"]
        for split in CIRR_SPLITS:
            c = sizes["cirr"][split]
            lines.append(f"  captions/cap.rc2.{split}.json  {c['triplets']} triplets"
                         + (" (no targets)" if split == "test1" else ""))
            lines.append(f"  image_splits/split.rc2.{split}.json  {c['images']} images in {c['sets']} sets of 6")
        lines += [
            f"  image_features.npz      name -> float32 [{p['global_dim']}] global (CLIP-like) vector",
        ]
        if p["n_aug"] > 0:
            lines.append(f"  image_features_aug.npz  name -> float32 [{p['n_aug']}, {p['global_dim']}] augmented views")
        lines += [
            "",
            "  Each set holds a base scene and 5 variants, each one edit away from the base",
            "  (replace an object, change a colour or size, add or remove an object, change the",
            "  setting). A triplet's target differs from its reference by exactly the edit its",
            "  caption states. There are no image files; the relative paths are nominal.",
            "",
        ]
    lines += [
        "truth/: the scene graph of every image (with the object behind each region) and the",
        "edit behind every composed pair, for analysis only.",
        "demo_meta.json: parameters, seed, sizes and the list of files.",
        "",
    ]
    return "\n".join(lines)


def make_demo_dataset(out_dir: str | os.PathLike, *, seed: int = DEMO_DEFAULTS["seed"],
                      n_train: int = DEMO_DEFAULTS["n_train"], n_dev: int = DEMO_DEFAULTS["n_dev"],
                      n_test: int = DEMO_DEFAULTS["n_test"], n_regions: int = DEMO_DEFAULTS["n_regions"],
                      region_dim: int = DEMO_DEFAULTS["region_dim"], composed: bool = DEMO_DEFAULTS["composed"],
                      n_cirr_train: int = DEMO_DEFAULTS["n_cirr_train"],
                      n_cirr_val: int = DEMO_DEFAULTS["n_cirr_val"],
                      n_cirr_test: int = DEMO_DEFAULTS["n_cirr_test"],
                      cirr_pairs_per_set: dict[str, int] | None = None,
                      global_dim: int = DEMO_DEFAULTS["global_dim"], n_aug: int = DEMO_DEFAULTS["n_aug"],
                      overwrite: bool = False) -> Path:
    """Write the demo dataset into ``out_dir`` and return it.

    The folder is built as ``<out_dir>.partial`` and renamed onto ``out_dir`` when complete.
    An existing complete demo folder is replaced only with ``overwrite=True``; a non-empty
    folder that is not a demo dataset is never replaced. Raises ``InputError`` for either.
    """
    out = Path(out_dir)
    params = {
        "seed": seed, "n_train": n_train, "n_dev": n_dev, "n_test": n_test, "n_regions": n_regions,
        "region_dim": region_dim, "composed": bool(composed), "n_cirr_train": n_cirr_train,
        "n_cirr_val": n_cirr_val, "n_cirr_test": n_cirr_test,
        "cirr_pairs_per_set": dict(cirr_pairs_per_set if cirr_pairs_per_set is not None
                                   else DEMO_DEFAULTS["cirr_pairs_per_set"]),
        "global_dim": global_dim, "n_aug": n_aug,
    }
    _check_params(params)
    params = {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v)
              for k, v in params.items()}
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        if demo_is_complete(out):
            if not overwrite:
                raise InputError(out, "a complete demo dataset is already here; pass overwrite=True "
                                      "(--overwrite) to replace it")
        elif any(out.iterdir()) and not (out / META_NAME).exists():
            raise InputError(out, "the folder exists, is not empty and is not a featvlr demo dataset; "
                                  "refusing to write into it")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        sizes = _generate(partial, params)
        (partial / "README.txt").write_text(_readme(params, sizes), encoding="utf-8")
        files = {}
        for path in sorted(partial.rglob("*")):
            if path.is_file():
                files[path.relative_to(partial).as_posix()] = path.stat().st_size
        meta = {
            "format": DEMO_FORMAT,
            "format_version": DEMO_FORMAT_VERSION,
            "seed": params["seed"],
            "params": params,
            "sizes": sizes,
            "world": {"categories": list(CATEGORIES), "attributes": list(ATTRIBUTES),
                      "relations": list(RELATIONS), "scenes": list(SCENES)},
            "files": files,
        }
        _dump_json(partial / META_NAME, meta)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out)
    return out


def load_demo_meta(out_dir: str | os.PathLike) -> dict:
    """The ``demo_meta.json`` of a demo folder (``InputError`` when missing or unreadable)."""
    path = Path(out_dir) / META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable demo metadata file: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != DEMO_FORMAT:
        raise InputError(path, "not a featvlr demo metadata file")
    return meta


def demo_is_complete(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a finished demo dataset: metadata readable, every listed file present
    with its recorded size."""
    root = Path(out_dir)
    try:
        meta = load_demo_meta(root)
    except InputError:
        return False
    if meta.get("format_version") != DEMO_FORMAT_VERSION or not isinstance(meta.get("files"), dict):
        return False
    for rel, size in meta["files"].items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def demo_sources(out_dir: str | os.PathLike) -> dict[str, Path | None]:
    """Paths that the extract functions take for a demo folder.

    Keys: ``precomp_root`` (for ``extract_precomp``), ``cirr_root``, ``image_features`` and
    ``aug_features`` (for ``extract_composed('cirr', ...)``; None where not written).
    """
    root = Path(out_dir)
    cirr = root / "cirr"
    feats, aug = cirr / "image_features.npz", cirr / "image_features_aug.npz"
    return {
        "precomp_root": root,
        "cirr_root": cirr if cirr.is_dir() else None,
        "image_features": feats if feats.is_file() else None,
        "aug_features": aug if aug.is_file() else None,
    }
