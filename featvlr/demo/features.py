"""Feature synthesis: latent vectors of the world, region features and global (CLIP-like) vectors.

The visual side is deliberately the weaker, noisier modality (see :mod:`featvlr.demo`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from featvlr.demo.vocabulary import CAT_GROUP, CAT_INDEX, CATEGORIES, COLOURS, GROUPS, RELATIONS, SCENES, SIZES

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
class World:
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


def make_world(rng: np.random.Generator, region_dim: int, global_dim: int) -> World:
    L = _LATENT_DIM
    group = _unit_rows(rng, len(GROUPS), L)
    own = _unit_rows(rng, len(CATEGORIES), L)
    gidx = np.array([GROUPS.index(CAT_GROUP[c]) for c in CATEGORIES])
    cat = _V["group"] * group[gidx] + _V["own"] * own
    cat /= np.linalg.norm(cat, axis=1, keepdims=True)
    size = np.zeros((3, L))
    size[[0, 2]] = _unit_rows(rng, 2, L)
    return World(
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


def _object_latent(w: World, sc: dict, i: int, colour: float, size: float, role: float) -> np.ndarray:
    obj = sc["objects"][i]
    z = w.category[CAT_INDEX[obj["category"]]] + colour * w.colour[COLOURS.index(obj["colour"])] \
        + size * w.size[SIZES.index(obj["size"])]
    for s, rel, o in sc["relations"]:
        r = RELATIONS.index(rel)
        if s == i:
            z = z + role * w.role_subj[r]
        if o == i:
            z = z + role * w.role_obj[r]
    return z


def region_features(rng: np.random.Generator, w: World, scenes: list[dict], n_regions: int,
                    noise_scale: float = 1.0) -> tuple[np.ndarray, list]:
    """Region features ``[N, R, D]`` and, per image, the object index of each region (-1: clutter).

    ``noise_scale`` multiplies every noise term of the visual side (object, part and clutter
    latent noise, observation noise); 1.0 is the demo's.
    """
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
            slots.append((i, z + _V["noise"] * noise_scale * noise[n, len(slots)]))
            if rng.random() < _V["p_part"] and len(slots) < n_regions:
                slots.append((i, _V["part_scale"] * z + _V["part_noise"] * noise_scale * noise[n, len(slots)]))
        while len(slots) < n_regions:
            z = _V["clutter_scene"] * sv + _V["clutter_noise"] * noise_scale * noise[n, len(slots)]
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
    X += _V["obs_noise"] * noise_scale * rng.standard_normal(X.shape)
    return X.reshape(N, n_regions, -1).astype(np.float32), owners


def _global_latent(w: World, sc: dict) -> np.ndarray:
    z = _G["scene"] * w.scene[SCENES.index(sc["scene"])]
    for i in range(len(sc["objects"])):
        z = z + _object_latent(w, sc, i, _G["colour"], _G["size"], _G["role"])
    return z


def global_features(rng: np.random.Generator, w: World, scenes: list[dict], n_aug: int
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
