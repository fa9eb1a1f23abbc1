"""The demo world's vocabulary: groups, categories, colours, sizes, relations and scene types.

Fixed tables (no randomness). A category row gives its group, its nouns (a repeated noun is
preferred) and the colours it may have; a relation row gives its phrases, the subject groups
and object categories it fits (None: any) and its sampling weight; a scene row gives its
"in the X" phrases, its nouns and the categories likely in it.
"""
from __future__ import annotations

from typing import Any

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
CAT_INDEX = {name: i for i, name in enumerate(CATEGORIES)}
CAT_GROUP = {row[0]: row[1] for row in _CATEGORY_TABLE}
CAT_NOUNS = {row[0]: row[2] for row in _CATEGORY_TABLE}
CAT_COLOURS = {row[0]: row[3] for row in _CATEGORY_TABLE}

_ANY = None
_SURFACES = ("table", "chair", "bench", "sofa")
_HOLDABLE = ("ball", "kite", "frisbee", "umbrella", "cup", "bag", "book", "surfboard", "cat", "bird")
_RIDEABLE = ("bicycle", "motorcycle", "horse", "boat", "surfboard")
_SHELTERS = ("tree", "umbrella", "table")
_SMALL_GROUPS = ("person", "animal", "thing")
# name -> (phrases, subject groups or None, object categories or None, sampling weight)
RELATION_TABLE: dict[str, tuple[tuple[str, ...], Any, Any, float]] = {
    "next to": (("next to", "beside", "near", "by"), _ANY, _ANY, 3.0),
    "holding": (("holding", "carrying"), ("person",), _HOLDABLE, 2.0),
    "riding": (("riding", "riding on"), ("person",), _RIDEABLE, 1.5),
    "on": (("on", "on top of"), _SMALL_GROUPS, _SURFACES, 1.5),
    "behind": (("behind", "in back of"), _ANY, _ANY, 1.0),
    "in front of": (("in front of",), _ANY, _ANY, 1.0),
    "under": (("under", "beneath", "underneath"), _SMALL_GROUPS, _SHELTERS, 1.0),
}
RELATIONS = tuple(RELATION_TABLE)

# name -> (phrases "in the X", nouns, likely categories)
SCENE_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
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
SCENES = tuple(SCENE_TABLE)
