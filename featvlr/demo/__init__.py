"""The built-in demo dataset: a small synthetic world written in the layouts users already have.

``make_demo_dataset(out)`` writes, from one seed and byte for byte reproducibly:

- a SCAN/BUTD "precomp" dataset (read by :mod:`featvlr.extract.precomp`): ``{split}_ims.npy``
  float32 ``[N, R, D]`` region features, ``{split}_caps.txt`` (5 consecutive captions per image)
  and ``{split}_ids.txt`` for the splits ``train``, ``dev`` and ``test``;
- a composed-retrieval split in the CIRR layout (read by :mod:`featvlr.extract.composed_readers`)
  under ``cirr/``: ``captions/cap.rc2.{train,val,test1}.json``, ``image_splits/split.rc2.{...}.json``, and
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

Modules, one job each: :mod:`~featvlr.demo.vocabulary` (the fixed tables),
:mod:`~featvlr.demo.scenes` (scene sampling), :mod:`~featvlr.demo.captions` (caption
grammar), :mod:`~featvlr.demo.edits` (edits and their inverses), :mod:`~featvlr.demo.features`
(region and global features), :mod:`~featvlr.demo.composed` (the composed sets and
triplets), :mod:`~featvlr.demo.writers` (the files) and :mod:`~featvlr.demo.dataset`
(``make_demo_dataset`` and the folder checks).
"""
from __future__ import annotations

from featvlr.demo.captions import CAPTIONS_PER_IMAGE
from featvlr.demo.composed import SET_SIZE
from featvlr.demo.dataset import DEMO_DEFAULTS, demo_is_complete, demo_sources, load_demo_meta, make_demo_dataset
from featvlr.demo.vocabulary import ATTRIBUTES, CATEGORIES, COLOURS, GROUPS, RELATIONS, SCENES, SIZES
from featvlr.demo.writers import CIRR_SPLITS, DEMO_FORMAT, DEMO_FORMAT_VERSION, META_NAME, PRECOMP_SPLITS

__all__ = [
    "ATTRIBUTES", "CAPTIONS_PER_IMAGE", "CATEGORIES", "CIRR_SPLITS", "COLOURS", "DEMO_DEFAULTS", "DEMO_FORMAT",
    "DEMO_FORMAT_VERSION", "GROUPS", "META_NAME", "PRECOMP_SPLITS", "RELATIONS", "SCENES", "SET_SIZE", "SIZES",
    "demo_is_complete", "demo_sources", "load_demo_meta", "make_demo_dataset",
]
