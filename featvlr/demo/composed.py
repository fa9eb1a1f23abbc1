"""The composed split (CIRR layout): sets of 6 related scenes and the triplets drawn from them.

Each set holds a base scene and 5 variants one edit away from it; sets come in families
whose bases are a few edits from one prototype scene, so a gallery holds near misses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from featvlr.demo.captions import edit_caption
from featvlr.demo.edits import apply_edit, propose_edit
from featvlr.demo.scenes import sample_scene, scene_key

SET_SIZE = 6  # CIRR img_set: the reference, the target and 4 more similar images
_FAMILY = 3  # composed sets per family of related scenes
_FAMILY_EDITS = 1  # edits from the family's prototype scene to each set's base


def _edited_base(rng: np.random.Generator, proto: dict, n_edits: int) -> dict:
    """``proto`` after ``n_edits`` random edits (a sibling of the other sets of its family)."""
    sc = proto
    for _ in range(n_edits):
        for _try in range(20):
            prop = propose_edit(rng, sc)
            if prop is not None:
                sc = apply_edit(sc, prop[0])
                break
    return sc


def _make_set(rng: np.random.Generator, base: dict, taken: dict[str, bool]
              ) -> list[tuple[dict, dict, dict]] | None:
    """5 one-edit variants of ``base``: [(variant, op base->variant, inverse op)], or None.

    No scene in ``taken`` (the scenes already in the split) is used again; the new ones are
    added to it, so no two images of a gallery show the same scene."""
    if scene_key(base) in taken:
        return None
    seen = [scene_key(base)]
    used: list[tuple] = []
    variants: list[tuple[dict, dict, dict]] = []
    for _ in range(60):
        prop = propose_edit(rng, base)
        if prop is None:
            continue
        op, inv = prop
        target_key = (op["type"], op.get("object", -1))  # at most one edit per (type, object)
        new = apply_edit(base, op)
        key = scene_key(new)
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
class ComposedSplit:
    names: list[str]
    scenes: list[dict]
    triplets: list[dict]   # CIRR records
    edits: list[dict]      # {pairid, reference, target, edit}


def composed_split(rng: np.random.Generator, split: str, n_triplets: int, per_set: int,
                    pairid_start: int, set_id_start: int) -> ComposedSplit:
    per_set = max(1, min(int(per_set), 2 * (SET_SIZE - 1)))
    n_sets = max(1, math.ceil(n_triplets / per_set))
    names: list[str] = []
    scenes: list[dict] = []
    records: list[tuple[dict, dict]] = []
    proto = sample_scene(rng)
    taken: dict[str, bool] = {}
    for k in range(n_sets):
        set_id = set_id_start + k
        # sets come in families of _FAMILY sets whose bases are a few edits from one
        # prototype scene, so a gallery holds near misses outside the reference's own set
        if k % _FAMILY == 0:
            proto = sample_scene(rng)
        for attempt in range(1000):
            if attempt % 20 == 19:  # this family's neighbourhood is used up
                proto = sample_scene(rng)
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
            caption = edit_caption(rng, op, members_sc[ref])
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
    return ComposedSplit(names, scenes, triplets, edits)
