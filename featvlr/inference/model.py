"""A trained run as a model: encode raw captions and cached or given image features, and
search a cache split's gallery (:func:`load`).

Example::

    import featvlr

    model = featvlr.load("runs/demo_vse")               # best.pt, CUDA when present
    emb = model.encode_texts(["a dog running on the beach"])   # [1, d], L2-normalised
    hits = model.search("a dog running on the beach", k=5)   # the JSON record of `featvlr search`
    [(h["image_id"], round(h["score"], 3)) for h in hits["results"]["t2i"]]
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError, InputError
from featvlr.inference.index import GalleryIndex, index_key, load_index, save_index
from featvlr.inference.text import captions_batch, storage_dtype, text_model_folder


def load(run: str | os.PathLike, *, device: str | torch.device = "auto", which: str = "best",
         cache: str | os.PathLike | None = None, text_model: str | os.PathLike | None = None) -> RetrievalModel:
    """Load a trained run (a run folder or a checkpoint file) for encoding and search.

    Args:
        run: ``runs/<name>`` (``ckpt/<which>.pt``, else ``last.pt``) or a ``.pt`` file.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``.
        which: ``best`` or ``last``.
        cache: the feature cache (default: the run config's ``data.cache``).
        text_model: the text encoder folder (default: the one the cache records).
    """
    from featvlr.core.checkpoint import resolve_checkpoint
    from featvlr.core.device import pick_device
    from featvlr.inference.loading import load_method

    path = Path(run)
    if not path.exists():
        raise InputError(path, "no such run folder or checkpoint")
    dev = pick_device(device)
    ckpt = resolve_checkpoint(path, which)
    method, config = load_method(ckpt, dev, which)
    cache_path = Path(cache) if cache is not None else Path(getattr(config.data, "cache", "") or "")
    if not str(cache_path) or not cache_path.exists():
        raise InputError(cache_path, "no such feature cache (the run's data.cache); pass --cache")
    return RetrievalModel(method, config, checkpoint=ckpt, cache=cache_path, device=dev, text_model=text_model)


class RetrievalModel:
    """A trained method with its feature cache and text encoder (see :func:`load`).

    Attributes:
        method: the :class:`~featvlr.methods.base.Method` in eval mode on ``device``.
        config: the run's resolved config.
        task: ``"cross_modal"`` or ``"composed"``.
        store: the :class:`~featvlr.cache.store.FeatureStore` of the cache.
        run_dir: the run folder (index files go to ``run_dir / "index"``).
    """

    def __init__(self, method: Any, config: Any, *, checkpoint: Path, cache: Path, device: torch.device,
                 text_model: str | os.PathLike | None = None):
        from featvlr.cache.store import open_store

        self.method, self.config, self.device = method, config, torch.device(device)
        self.checkpoint, self.cache = Path(checkpoint), Path(cache)
        self.task = method.task
        self.store = open_store(cache)
        parent = self.checkpoint.parent
        self.run_dir = parent.parent if parent.name == "ckpt" else parent
        self.max_tokens = int(getattr(config.data, "max_tokens", 0) or 0)
        self._text_model = text_model
        self._encoder: Any = None
        self._indexes: dict[str, GalleryIndex] = {}

    def __repr__(self) -> str:
        return f"RetrievalModel(method={self.method.name!r}, checkpoint={str(self.checkpoint)!r}, device={self.device})"

    # -- splits and the text encoder ------------------------------------------------------
    def split(self, name: str = "test") -> Any:
        """The cache split ``name``; ``test``/``dev``/``train`` also find the config's
        ``data.<name>_split`` (CIRR's ``test1``)."""
        if name not in self.store.splits():
            alias = getattr(self.config.data, f"{name}_split", None)
            if alias and alias in self.store.splits():
                name = alias
        return self.store.split(name)

    @property
    def text_encoder(self) -> Any:
        """The cache's text encoder (:class:`~featvlr.extract.text_encoder.TextEncoder`),
        loaded offline from its local folder on first use."""
        if self._encoder is None:
            from featvlr.extract.text_encoder import TextEncoder

            folder = text_model_folder(self.store, self._text_model)
            dev = "cuda" if self.device.type == "cuda" else "cpu"
            enc = TextEncoder(folder, device=dev)
            want = self.method.dims.text_dim
            if want and enc.dim != want:
                raise InputError(folder, f"the text encoder gives {enc.dim}-d features, the run was trained "
                                         f"on {want}-d")
            self._encoder = enc
        return self._encoder

    # -- encoders -------------------------------------------------------------------------
    def text_batch(self, texts: Sequence[str], split: str = "test") -> dict[str, torch.Tensor]:
        """The method batch of raw texts, rounded to the split's storage dtype as the cache is."""
        if isinstance(texts, str):
            texts = [texts]
        sp = self.split(split)
        return captions_batch(self.text_encoder, texts, max_tokens=self.max_tokens, round_to=storage_dtype(sp),
                              device=self.device, tokens=sp.has_tokens)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, split: str = "test") -> Any:
        """Embed raw captions: the cache's text encoder, then the trained head.

        Args:
            texts: the captions (a list of str; one str is one caption).
            split: the split whose storage dtype the features are rounded to.

        Returns:
            ``[len(texts), d]`` L2-normalised embeddings on ``device`` (a pairwise method's
            dict of padded token tensors).
        """
        from featvlr.evaluation.embed import check_encoder_batch
        from featvlr.methods.base import TEXT_KEYS

        if self.task != "cross_modal":
            raise FeatvlrError(f"method {self.method.name!r} is composed: use encode_queries")
        batch = self.text_batch(texts, split)
        check_encoder_batch(self.method, batch, TEXT_KEYS)  # a cache of pooled vectors only: one error
        return self.method.encode_texts(batch)

    @torch.no_grad()
    def encode_images(self, rows: Any = None, *, split: str = "test", regions: Any = None, lengths: Any = None,
                      global_features: Any = None) -> Any:
        """Embed images: cache rows of ``split`` (``rows``: ints; None = every image), or
        raw features laid out as in the cache.

        Args:
            rows: image rows of the split.
            regions: ``[B, R, D]`` region features (valid regions first) with ``lengths``
                ``[B]`` (default: all ``R`` valid).
            global_features: ``[B, Dg]`` global image vectors (composed methods, GLS-free
                global heads).

        Returns:
            ``[B, d]`` embeddings on ``device`` (a pairwise method's dict of tensors).
        """
        from featvlr.data import move_to, region_batch, to_tensors
        from featvlr.evaluation.embed import check_encoder_batch
        from featvlr.methods.base import IMAGE_KEYS

        batch: dict[str, np.ndarray] = {}
        if regions is not None or global_features is not None:
            if regions is not None:
                reg = np.asarray(regions, dtype=np.float32)
                if reg.ndim != 3:
                    raise FeatvlrError(f"regions must be [B, R, D], got shape {reg.shape}")
                n = np.full(len(reg), reg.shape[1]) if lengths is None else np.asarray(lengths)
                mask = np.arange(reg.shape[1])[None, :] < n[:, None]
                batch.update(regions=reg * mask[:, :, None], region_mask=mask)
            if global_features is not None:
                batch["global_image"] = np.asarray(global_features, dtype=np.float32)
        else:
            sp = self.split(split)
            rows = np.arange(sp.n_images) if rows is None else np.atleast_1d(np.asarray(rows, dtype=np.int64))
            if sp.has_regions:
                batch.update(region_batch(sp, rows))
            if sp.has(f"images/{sp.name}/global"):
                batch["global_image"] = sp.global_features(rows).astype(np.float32, copy=False)
            batch["image_ids"] = rows
        tensors = move_to(to_tensors(batch), self.device)
        check_encoder_batch(self.method, tensors, IMAGE_KEYS)  # e.g. a cache without regions: one error
        return self.method.encode_images(tensors)

    @torch.no_grad()
    def encode_queries(self, references: Sequence[Any], modifiers: Sequence[str], *, split: str = "test"
                       ) -> torch.Tensor:
        """Embed composed queries (composed methods): reference images (ids or rows of
        ``split``) and modifier texts, ``[Q, d]`` on ``device``."""
        if self.task != "composed":
            raise FeatvlrError(f"method {self.method.name!r} is not composed: use encode_texts")
        if isinstance(modifiers, str):
            modifiers = [modifiers]
        sp = self.split(split)
        refs = np.array([self.image_row(r, split) for r in references], dtype=np.int64)
        if len(refs) != len(modifiers):
            raise FeatvlrError(f"{len(refs)} references for {len(modifiers)} modifier texts")
        batch = self.text_batch(modifiers, split)
        batch["reference_image"] = torch.from_numpy(np.asarray(sp.global_features(refs), dtype=np.float32)).to(
            self.device)
        batch["reference_ids"] = torch.from_numpy(refs).to(self.device)
        return self.method.encode_queries(batch).float()

    def image_row(self, image: Any, split: str = "test") -> int:
        """The row of image ``image`` (an id of the split, or an int row) in ``split``."""
        sp = self.split(split)
        if isinstance(image, (int, np.integer)):
            if not 0 <= int(image) < sp.n_images:
                raise FeatvlrError(f"image row {image} is outside the {sp.n_images} images of split {sp.name!r}")
            return int(image)
        ids = self._ids(sp)
        if str(image) not in ids:
            some = ", ".join(list(ids)[:3])
            raise FeatvlrError(f"unknown image id {image!r} in split {sp.name!r} ({sp.n_images} images; ids look "
                               f"like {some})")
        return ids[str(image)]

    def _ids(self, sp: Any) -> dict[str, int]:
        cached = self.__dict__.setdefault("_id_maps", {})
        if sp.name not in cached:
            cached[sp.name] = {name: i for i, name in enumerate(sp.image_ids())}
        return cached[sp.name]

    # -- the gallery index ----------------------------------------------------------------
    def index(self, split: str = "test", *, rebuild: bool = False, save: bool = True) -> GalleryIndex:
        """The gallery index of ``split``: read from ``<run>/index/<split>.pt`` when it was
        built from this checkpoint and cache, else built (and saved when ``save``)."""
        from featvlr.evaluation.embed import embed_composed_split, embed_split

        sp = self.split(split)
        if sp.name in self._indexes and not rebuild:
            return self._indexes[sp.name]
        key = index_key(self.checkpoint, self.cache, sp.name, self.max_tokens)
        path = self.run_dir / "index" / f"{sp.name}.pt"
        idx = None if rebuild else load_index(path, key, self.device)
        if idx is None:
            if self.task == "composed":
                _, gallery = embed_composed_split(self.method, sp, device=self.device)
                idx = GalleryIndex(sp.name, gallery, None, key=key, path=path, built=True)
            else:
                images, texts = embed_split(self.method, sp, device=self.device, max_tokens=self.max_tokens)
                idx = GalleryIndex(sp.name, images, texts, key=key, path=path, built=True)
            if save:
                try:
                    save_index(idx, path)
                except OSError:  # a read-only run folder: keep it in memory
                    idx.path = None
        self._indexes[sp.name] = idx
        return idx

    def image_files(self, split: str = "test") -> list[str | None] | None:
        """Image files of the split's images where the cache records an image folder
        (``sources["images_dir"]``) holding them, else None."""
        sources = self.store.attrs.get("sources")
        folder = sources.get("images_dir") if isinstance(sources, dict) else None
        if not folder or not Path(folder).is_dir():
            return None
        out: list[str | None] = []
        for name in self.split(split).image_ids():
            found = None
            for cand in (name, name + ".png", name + ".jpg", name + ".jpeg"):
                p = Path(folder) / cand
                if p.is_file():
                    found = str(p.resolve())
                    break
            out.append(found)
        return out if any(out) else None

    def search(self, text: str | None = None, *, image: Any = None, reference: Any = None,
               modifier: str | None = None, split: str = "test", k: int = 10, backend: str = "exact") -> dict[str, Any]:
        """Search the gallery of ``split``; the record ``featvlr search --json`` prints.

        One query: ``text`` (t2i), ``image`` (an image id or row: i2t and i2i, the image
        itself left out of i2i), or ``reference`` with ``modifier`` (composed methods; the
        reference left out where the protocol removes it). ``backend``: ``exact`` (the
        evaluation's ranking; GLS: global shortlist then local re-rank) or a FAISS index
        (``faiss-flat``/``-ivf``/``-hnsw``, embedding methods only).
        See :mod:`featvlr.inference.records` for the record's keys.
        """
        from featvlr.inference.records import search_record

        return search_record(self, text=text, image=image, reference=reference, modifier=modifier, split=split,
                             k=k, backend=backend)
