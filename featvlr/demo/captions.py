"""Caption grammar: English sentences about a scene, and the sentence that states an edit."""
from __future__ import annotations

import numpy as np

from featvlr.demo.scenes import choice, weighted
from featvlr.demo.vocabulary import CAT_GROUP, CAT_NOUNS, RELATION_TABLE, SCENE_TABLE

CAPTIONS_PER_IMAGE = 5


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(rng: np.random.Generator, obj: dict) -> str:
    person = CAT_GROUP[obj["category"]] == "person"
    if obj["size"] == "small":
        return choice(rng, ("short", "small") if person else ("small", "little", "small"))
    return choice(rng, ("tall", "big") if person else ("large", "big", "large"))


def noun_phrase(rng: np.random.Generator, obj: dict, *, p_colour: float = 0.5, p_size: float = 0.35,
                 force: bool = False) -> str:
    """'a small red dog', 'a tall man in a blue shirt' (indefinite)."""
    noun = choice(rng, CAT_NOUNS[obj["category"]])
    person = CAT_GROUP[obj["category"]] == "person"
    use_colour = force or rng.random() < p_colour
    use_size = obj["size"] != "medium" and (force or rng.random() < p_size)
    if use_size and noun.startswith(("young", "little")):
        noun = obj["category"]
    size = _size_word(rng, obj) + " " if use_size else ""
    colour = obj["colour"]
    if person:
        phrase = article(size + noun)
        if use_colour:
            phrase += " " + choice(rng, (f"in {colour}", f"in a {colour} shirt", f"wearing {colour}",
                                          f"dressed in {colour}", f"in a {colour} jacket"))
        return phrase
    return article(size + (colour + " " if use_colour else "") + noun)


def _the(rng: np.random.Generator, obj: dict) -> str:
    return choice(rng, CAT_NOUNS[obj["category"]])


def _rel_phrase(rng: np.random.Generator, rel: str, subj: dict) -> str:
    phrases = RELATION_TABLE[rel][0]
    if rel == "on" and CAT_GROUP[subj["category"]] in ("person", "animal") and rng.random() < 0.5:
        return "sitting on"
    return choice(rng, phrases)


def _capitalise(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _caption(rng: np.random.Generator, sc: dict) -> str:
    objs = sc["objects"]
    where = choice(rng, SCENE_TABLE[sc["scene"]][0])
    place = choice(rng, SCENE_TABLE[sc["scene"]][1])
    if sc["relations"] and rng.random() < 0.6:
        s, rel, o = sc["relations"][int(rng.integers(len(sc["relations"])))]
        subj, obj = noun_phrase(rng, objs[s]), noun_phrase(rng, objs[o])
        phrase = _rel_phrase(rng, rel, objs[s])
        others = [i for i in range(len(objs)) if i not in (s, o)]
        other = noun_phrase(rng, objs[choice(rng, others)], p_colour=0.3, p_size=0.1) if others else None
        verb = "is " if rel != "riding" else choice(rng, ("is ", ""))
        t = int(rng.integers(8 if other else 6))
        return _capitalise([
            f"{subj} {phrase} {obj}",
            f"there is {subj} {phrase} {obj}",
            f"{subj} {verb}{phrase} {obj}",
            f"{subj} {phrase} {obj} {where}",
            f"a photo of {subj} {phrase} {obj}",
            f"{where}, {subj} {verb}{phrase} {obj}",
            f"{subj} {phrase} {obj} with {other} nearby",
            f"{subj} {phrase} {obj} and {other} in the background",
        ][t])
    k = min(len(objs), 1 + weighted(rng, (0.3, 0.45, 0.25)))
    first = 0 if rng.random() < 0.7 else int(rng.integers(len(objs)))
    rest = [i for i in range(len(objs)) if i != first]
    picked = [first] + [rest[int(j)] for j in rng.permutation(len(rest))[: k - 1]]
    nps = [noun_phrase(rng, objs[i]) for i in picked]
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


def captions(rng: np.random.Generator, sc: dict) -> list[str]:
    caps: list[str] = []
    for _ in range(CAPTIONS_PER_IMAGE):
        cap = _caption(rng, sc)
        for _retry in range(5):
            if cap not in caps:
                break
            cap = _caption(rng, sc)
        caps.append(cap)
    return caps


def edit_caption(rng: np.random.Generator, op: dict, before: dict) -> str:
    kind = op["type"]
    if kind == "replace":
        old = _the(rng, before["objects"][op["object"]])
        new = article(choice(rng, CAT_NOUNS[op["to"]]))
        t = choice(rng, (f"change the {old} to {new}", f"replace the {old} with {new}",
                          f"swap the {old} for {new}", f"the {old} should be {new} instead",
                          f"turn the {old} into {new}", f"{new} instead of the {old}"))
    elif kind == "colour":
        obj = before["objects"][op["object"]]
        n, c = _the(rng, obj), op["to"]
        opts = [f"make the {n} {c}", f"change the colour of the {n} to {c}", f"the {n} should be {c}",
                f"paint the {n} {c}"]
        if CAT_GROUP[obj["category"]] == "person":
            opts = [f"dress the {n} in {c}", f"the {n} should wear {c}", f"make the {n} wear {c}",
                    f"put the {n} in {c} clothes"]
        t = choice(rng, opts)
    elif kind == "size":
        n = _the(rng, before["objects"][op["object"]])
        t = choice(rng, {
            "large": (f"make the {n} bigger", f"make the {n} larger", f"enlarge the {n}",
                      f"the {n} should be big"),
            "small": (f"make the {n} smaller", f"shrink the {n}", f"the {n} should be small",
                      f"make the {n} little"),
            "medium": (f"make the {n} normal sized", f"the {n} should be of medium size",
                       f"give the {n} an ordinary size"),
        }[op["to"]])
    elif kind == "add":
        np_ = noun_phrase(rng, op["new"], force=True)
        t = choice(rng, (f"add {np_}", f"put {np_} in the picture", f"include {np_}",
                          f"there should also be {np_}", f"add {np_} to the scene"))
    elif kind == "remove":
        n = _the(rng, before["objects"][op["object"]])
        t = choice(rng, (f"remove the {n}", f"take away the {n}", f"get rid of the {n}",
                          f"delete the {n}", f"the {n} should be gone", f"the same but without the {n}"))
    else:  # scene
        where = choice(rng, SCENE_TABLE[op["to"]][0])
        place = choice(rng, SCENE_TABLE[op["to"]][1])
        t = choice(rng, (f"change the setting to {article(place)}", f"move everything to the {place}",
                          f"put it all {where}", f"the background should be {article(place)}"))
    return _capitalise(t)
