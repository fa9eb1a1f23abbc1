"""What an evaluation computes: the scenario names, the folds rule and the options of one run.

:class:`EvalOptions` groups the protocol knobs every evaluation path shares (the trainer's
dev and test evaluations, ``featvlr eval`` and ablations); :meth:`EvalOptions.from_config`
derives them from a run config, :func:`protocol_folds` is the one folds rule and
:func:`protocol_record` the ``protocol`` block of a results JSON.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from featvlr.core.errors import FeatvlrError
from featvlr.retrieval import DEFAULT_CHUNK_ELEMENTS

CROSS_MODAL = ("i2t", "t2i")
UNI_AND_MIXED = ("i2i", "t2t", "i2it", "t2it")
SCENARIOS = CROSS_MODAL + UNI_AND_MIXED + ("composed",)
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
COMPOSED_PROTOCOLS = ("cirr", "fashioniq", "shoes")

TIE_RULE = ("pessimistic: a rank counts every other non-excluded candidate scoring >= the ground truth; "
            "NDCG orders equal scores by relevance ascending")
NDCG_GAINS = {"ndcg_lin": "rel (linear gain, CoVLR/RVLR)", "ndcg_exp": "2^rel - 1 (exponential gain, TERAN)"}


def parse_scenarios(value: str | Sequence[str] | None) -> list[str] | None:
    """``"all"``/None -> None (every scenario the input allows); ``"i2t,t2i"`` -> a checked list."""
    if value is None:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items or items == ["all"]:
        return None
    unknown = [v for v in items if v not in SCENARIOS]
    if unknown:
        raise FeatvlrError(f"unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)}, or 'all')")
    return list(dict.fromkeys(items))


def parse_ints(text: str | Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    """``"1,5"`` -> ``(1, 5)``."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(x) for x in text)
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FeatvlrError(f"--{what} expects comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise FeatvlrError(f"--{what} expects positive integers, got {text!r}")
    return values


def protocol_folds(config: Any, *, final: bool = True) -> tuple[int, ...]:
    """The folds of an evaluation: on the test protocol (``final``) COCO, or ``eval.folds > 1``,
    adds the 5-fold 1K average to the whole split; every dev evaluation is one fold."""
    if not final:
        return (1,)
    data = getattr(config, "data", None)
    ev = getattr(config, "eval", None)
    if data is not None and str(getattr(data, "dataset", "")).lower() == "coco":
        return (1, 5)
    f = int(getattr(ev, "folds", 1) or 1)
    return (1,) if f == 1 else (1, f)


def int_tuple(value: int | Iterable[int], what: str) -> tuple[int, ...]:
    """An integer or a sequence of integers as a tuple of ints: ``5`` -> ``(5,)``,
    ``[1, 5]`` -> ``(1, 5)``; anything else is a :class:`FeatvlrError` naming ``what``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)):
        items = tuple(value)
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer() for v in items):
            return tuple(int(v) for v in items)
    raise FeatvlrError(f"{what}: expected an integer or a sequence of integers, got {value!r}")


COCO_FIRST_IMAGES = 1000


def protocol_first_images(config: Any, *, final: bool = True) -> int:
    """How many first images form a block of their own: on the test protocol (``final``) of a
    COCO run, the first 1,000 (RVLR's and CoVLR's "COCO 1K", beside the 5-fold mean); else 0."""
    data = getattr(config, "data", None)
    if final and data is not None and str(getattr(data, "dataset", "")).lower() == "coco":
        return COCO_FIRST_IMAGES
    return 0


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """The protocol knobs of one evaluation.

    ``folds``, ``ks`` and ``ndcg_ks`` take an integer or a sequence of them and are stored
    as tuples of ints (``folds=5`` is ``folds=(5,)``).

    Attributes:
        folds: i2t/t2i folds, e.g. ``(1, 5)`` (COCO 5K and 1K).
        first_images: also every scenario on the first N images alone (``_first1k`` keys;
            COCO: 1000, :func:`protocol_first_images`); 0: not.
        ks: Recall@K cut-offs. ndcg_ks: linear-gain NDCG cut-offs; ndcg_exp_k: the
            exponential-gain one (also TERAN's for i2t/t2i).
        teran_ndcg: add TERAN's NDCG to i2t and t2i when the split has a relevance matrix.
        t2t_without_siblings: also report ``t2t_nosiblings``.
        backend, faiss_k, faiss_options: ``exact`` or a FAISS index (top-``faiss_k`` lists,
            R@K only; ``faiss_options``: :func:`featvlr.retrieval.faiss_search` keywords).
        batch_size, chunk_elements: embedding batches; most query x gallery scores at once.
        max_tokens: the training truncation of captions (``data.max_tokens``).
        composed_protocol: ``auto``, ``cirr``, ``fashioniq`` or ``shoes``; ``auto`` resolves
            from ``dataset``, else from the split's arrays
            (:func:`featvlr.evaluation.composed.resolve_composed_protocol`).
        dataset: the run's ``data.dataset`` ("" when unknown).
        geometry: add the embedding geometry (:mod:`featvlr.evaluation.geometry`) of
            global-embedding methods; geometry_block: its batch size (the run's
            ``train.batch_size``).
    """

    folds: tuple[int, ...] = (1,)
    first_images: int = 0
    ks: tuple[int, ...] = (1, 5, 10)
    ndcg_ks: tuple[int, ...] = (10, 20, 50)
    ndcg_exp_k: int = 25
    teran_ndcg: bool = True
    t2t_without_siblings: bool = False
    backend: str = "exact"
    faiss_k: int = 100
    faiss_options: Mapping[str, Any] | None = None
    batch_size: int = 512
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    max_tokens: int = 0
    composed_protocol: str = "auto"
    dataset: str = ""
    geometry: bool = True
    geometry_block: int = 128

    def __post_init__(self) -> None:
        for name in ("folds", "ks", "ndcg_ks"):
            object.__setattr__(self, name, int_tuple(getattr(self, name), name))
        if self.backend not in BACKENDS:
            raise FeatvlrError(f"unknown backend {self.backend!r} ({', '.join(BACKENDS)})")
        if self.composed_protocol not in ("auto",) + COMPOSED_PROTOCOLS:
            raise FeatvlrError(f"unknown composed protocol {self.composed_protocol!r} "
                               f"(auto, {', '.join(COMPOSED_PROTOCOLS)})")

    @classmethod
    def from_config(cls, config: Any, *, final: bool = True, **overrides: Any) -> EvalOptions:
        """The options a run config asks for: the test protocol when ``final`` (its folds,
        TERAN NDCG), else the cheap dev one; ``overrides`` that are not None win. The one way
        from a run's :class:`~featvlr.config.Config` to the options evaluators take."""
        if isinstance(config, EvalOptions):
            raise TypeError("EvalOptions.from_config takes a run config, not EvalOptions")
        data = getattr(config, "data", None)
        ev = getattr(config, "eval", None)
        values: dict[str, Any] = dict(
            folds=protocol_folds(config, final=final),
            first_images=protocol_first_images(config, final=final),
            ndcg_ks=tuple(getattr(ev, "ndcg_ks", (10, 20, 50))),
            ndcg_exp_k=int(getattr(ev, "ndcg_exp_k", 25)),
            teran_ndcg=final,
            batch_size=int(getattr(ev, "batch_size", 512)),
            chunk_elements=int(getattr(ev, "chunk_elements", DEFAULT_CHUNK_ELEMENTS)),
            max_tokens=int(getattr(data, "max_tokens", 0) or 0),
            dataset=str(getattr(data, "dataset", "") or ""),
            geometry_block=int(getattr(getattr(config, "train", None), "batch_size", 128) or 128),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def protocol_record(*, split: str | None, metrics: dict[str, float], folds: Sequence[int] = (1,),
                    ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = (10, 20, 50), ndcg_exp_k: int = 25,
                    backend: str = "exact", t2t_without_siblings: bool = False,
                    first_images: int = 0) -> dict[str, Any]:
    """The ``protocol`` block of a results JSON."""
    return {
        "split": split,
        "scenarios": sorted({k.split("/")[0] for k in metrics if "/" in k}),
        "folds": list(folds),
        "ks": list(ks),
        "ndcg_ks": list(ndcg_ks),
        "ndcg_exp_k": ndcg_exp_k,
        "ndcg_gain": NDCG_GAINS,
        "ndcg_scale": "fraction",
        "recall_scale": "percent",
        "ties": TIE_RULE,
        "backend": backend,
        "self_in_gallery": "removed (i2i, t2t, i2it, t2it)",
        "t2t_siblings": "kept" + (" (t2t_nosiblings: removed)" if t2t_without_siblings else ""),
        "coco_1k": "mean over folds of n_images / folds images" if any(f > 1 for f in folds) else None,
        # the first N images and their texts alone, one block (RVLR/CoVLR "COCO 1K"; keys *_first1k)
        "first_images": first_images if any("_first" in k.split("/")[0] for k in metrics) else None,
    }
