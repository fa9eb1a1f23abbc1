"""Cross-modal training batches: one item per caption, a whole batch built at a time.

Item ``b`` of epoch ``e`` is the ``b``-th slice of a permutation seeded by ``(seed, e)``;
its VSE-infinity region dropout draws are seeded by ``(seed, e, b)`` for the whole global
batch and sliced per rank, so the same seed gives the same batches whatever the number of
ranks, and a resumed run sees the batches an uninterrupted one would. Token augmentation
(``token_dropout``, ``token_replace``; off by default) draws from its own stream seeded by
``(seed, e, b, 1)`` the same way.

A batch is built in three steps, so that feature bytes are touched once:

1. :meth:`CaptionBatches.plan` (host, a few kB): the rows, the dropout draws, the order of
   the kept regions and the token positions (token augmentation edits them here);
2. :meth:`CaptionBatches.gather` (where the rows live: GPU, RAM or a memory map): one
   ``index_select`` per dataset, in the storage dtype (float16 stays float16), with region
   dropout and reordering folded into the region index;
3. :meth:`CaptionBatches.finalize` (on the training device): cast to float32, zero the
   dropped regions, pad the tokens. The result is the batch of
   :mod:`featvlr.methods.base`'s table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featvlr.data.buffers import PoolSlot
from featvlr.data.rows import RowTable, open_table
from featvlr.data.seeded import SeededBatches


@dataclass
class CaptionPlan:
    """Everything about a batch but its feature bytes (see the module docstring)."""

    captions: np.ndarray       # [B] caption rows
    images: np.ndarray         # [B] image rows
    region_index: np.ndarray   # [B * rmax] rows of the [N * R, D] region table
    region_mask: np.ndarray    # [B, rmax] bool
    token_src: np.ndarray      # [sum L] rows of the flat token table
    token_dest: np.ndarray     # [sum L] positions in the padded [B * lmax] token block
    token_mask: np.ndarray     # [B, lmax] bool


def token_positions(offsets: np.ndarray, rows: np.ndarray, max_tokens: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat token rows of captions ``rows``, their positions in a padded ``[B, lmax]`` block
    and its mask (``lmax`` at least 1; captions cut to ``max_tokens`` when it is set)."""
    lengths = offsets[rows + 1] - offsets[rows]
    if max_tokens:
        lengths = np.minimum(lengths, max_tokens)
    lmax = max(int(lengths.max(initial=0)), 1)
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    src = np.repeat(offsets[rows], lengths) + within
    dest = np.repeat(np.arange(len(rows), dtype=np.int64) * lmax, lengths) + within
    mask = np.arange(lmax)[None, :] < lengths[:, None]
    return src, dest, mask


def region_plan(images: np.ndarray, lengths: np.ndarray, n_regions: int, *, dropout: float = 0.0,
                uniform: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``[N * R, D]`` region table for ``images`` and the ``[B, rmax]`` mask.

    Valid regions come first. With ``dropout``, each valid region is dropped when its draw
    in ``uniform [B, R]`` is at most ``dropout`` (at least one region is kept) and the kept
    ones are moved to the front in their order (VSE-infinity's size augmentation).
    """
    b, r = len(images), n_regions
    valid = np.arange(r)[None, :] < lengths[:, None]
    order = np.broadcast_to(np.arange(r), (b, r))
    if dropout > 0 and uniform is not None:
        keep = (uniform > dropout) & valid
        keep[~keep.any(1), 0] = True
        order = np.argsort(~keep, axis=1, kind="stable")
        valid = np.take_along_axis(keep, order, axis=1)
    rmax = int(valid.sum(1).max()) if b else 0
    index = (images[:, None] * r + order[:, :rmax]).reshape(-1)
    return index, valid[:, :rmax]


def augment_tokens(src: np.ndarray, mask: np.ndarray, *, dropout: float = 0.0, replace: float = 0.0,
                   drop_u: np.ndarray | None = None, replace_u: np.ndarray | None = None,
                   replace_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature-level text augmentation of one batch's token plan (the analogue, on frozen token
    features, of VSE-infinity / HREM deleting and replacing words).

    ``src`` / ``mask [B, L]`` are :func:`token_positions`' rows and mask; the draws are
    ``[B, >= L]``. A valid token is replaced by the token row ``replace_rows`` (drawn from the
    split's whole token table, so another caption's token) when its ``replace_u`` draw is below
    ``replace``, then dropped when its ``drop_u`` draw is below ``dropout`` (at least one token
    of a caption is kept); the kept tokens move to the front in their order. Returns the new
    ``src``, ``dest`` and mask, as :func:`token_positions`.
    """
    b, lmax = mask.shape
    rows = np.zeros((b, lmax), dtype=np.int64)
    rows[mask] = src
    if replace > 0 and replace_u is not None and replace_rows is not None:
        swap = (replace_u[:, :lmax] < replace) & mask
        rows[swap] = replace_rows[:, :lmax][swap]
    keep = mask
    if dropout > 0 and drop_u is not None:
        keep = (drop_u[:, :lmax] >= dropout) & mask
        empty = ~keep.any(1)
        keep[empty, 0] = mask[empty, 0]
        order = np.argsort(~keep, axis=1, kind="stable")
        keep = np.take_along_axis(keep, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        width = max(int(keep.sum(1).max(initial=0)), 1)
        keep, rows = keep[:, :width], rows[:, :width]
    width = keep.shape[1]
    dest = (np.arange(b, dtype=np.int64)[:, None] * width + np.arange(width, dtype=np.int64)[None, :])[keep]
    return rows[keep], dest, np.ascontiguousarray(keep)


class CaptionBatches(SeededBatches):
    """Epoch of training batches over the captions of a split (one item = one batch).

    Args:
        split: the training split.
        batch_size: the global batch size (all ranks together).
        seed: base seed of the permutation and of region dropout.
        region_dropout: VSE-infinity region dropout probability.
        max_tokens: truncate captions to this many tokens (0 keeps all).
        token_dropout, token_replace: token augmentation probabilities (:func:`augment_tokens`;
            0 leaves the batches exactly as without them).
        rank, world_size: this process's share of every global batch under DDP.
        max_batches: cap on batches per epoch (0: all).
        placement: where the rows are read from (:mod:`featvlr.data.rows`): ``device``,
            ``memory`` or ``disk``; default ``memory`` when the split was loaded in memory,
            else ``disk`` (a memory map of the cache).
        device: the device of ``device`` placement.
    """

    def __init__(self, split, *, batch_size: int, seed: int = 0, region_dropout: float = 0.0,
                 max_tokens: int = 0, rank: int = 0, world_size: int = 1, max_batches: int = 0,
                 placement: str | None = None, device: torch.device | str = "cpu",
                 token_dropout: float = 0.0, token_replace: float = 0.0):
        self.split = split
        self.region_dropout = region_dropout
        self.max_tokens = max_tokens
        self.token_dropout, self.token_replace = token_dropout, token_replace
        self.image_index = split.image_index()
        self.has_global = split.has(f"images/{split.name}/global")
        self.has_tokens = split.has_tokens
        self.n_regions = split.n_regions
        self.region_lengths = split.region_lengths(np.arange(split.n_images))
        self.offsets = split.offsets() if self.has_tokens else None
        if self.offsets is not None and (token_dropout > 0 or token_replace > 0):
            longest = int(np.diff(self.offsets).max(initial=0))
            self.longest_caption = max(min(longest, max_tokens) if max_tokens else longest, 1)
        self.placement = placement or ("memory" if getattr(split, "_memory", None) else "disk")
        self.device = torch.device(device)
        self._tables: dict[str, RowTable] | None = None
        self._init_batches(np.arange(len(self.image_index)), batch_size=batch_size, seed=seed, rank=rank,
                           world_size=world_size, max_batches=max_batches, what=f"captions of split {split.name!r}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tables"] = None  # reopened where used
        return state

    @property
    def tables(self) -> dict[str, RowTable]:
        if self._tables is None:
            s = self.split
            tables = {"regions": open_table(s, s.k_regions, self.placement, self.device, region_rows=True),
                      "pooled": open_table(s, s.k_pooled, self.placement, self.device)}
            if self.has_tokens:
                tables["tokens"] = open_table(s, s.k_tokens, self.placement, self.device)
            if self.has_global:
                tables["global"] = open_table(s, s.k_global, self.placement, self.device)
            self._tables = tables
        return self._tables

    @property
    def table_device(self) -> torch.device:
        return self.tables["regions"].device

    def caption_rows(self, b: int) -> np.ndarray:
        """The captions of global batch ``b`` that this rank handles."""
        return self.batch_rows(b)

    def plan(self, b: int) -> CaptionPlan:
        if not 0 <= b < self.n_batches:
            raise IndexError(b)
        captions = self.caption_rows(b)
        images = self.image_index[captions]
        uniform = None
        if self.region_dropout > 0:
            # Draws for the whole global batch, sliced: the same regions drop whatever the ranks.
            share = self.batch_size // self.world_size
            draws = np.random.default_rng([self.seed, self.epoch, b]).random((self.batch_size, self.n_regions))
            uniform = draws[self.rank * share:(self.rank + 1) * share]
        region_index, region_mask = region_plan(images, self.region_lengths[images], self.n_regions,
                                                dropout=self.region_dropout, uniform=uniform)
        if self.has_tokens:
            src, dest, tmask = token_positions(self.offsets, captions, self.max_tokens)
            if self.token_dropout > 0 or self.token_replace > 0:
                src, dest, tmask = self._augment(b, src, tmask)
        else:
            src = dest = np.zeros(0, dtype=np.int64)
            tmask = np.zeros((len(captions), 0), dtype=bool)
        return CaptionPlan(captions, images, region_index, region_mask, src, dest, tmask)

    def _augment(self, b: int, src: np.ndarray, tmask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token augmentation of batch ``b``: draws for the whole global batch from their own
        stream, sliced to this rank (the same tokens change whatever the ranks)."""
        rng = np.random.default_rng([self.seed, self.epoch, b, 1])
        shape = (self.batch_size, self.longest_caption)
        drop_u, replace_u = rng.random(shape), rng.random(shape)
        replace_rows = rng.integers(0, int(self.offsets[-1]), size=shape)
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        return augment_tokens(src, tmask, dropout=self.token_dropout, replace=self.token_replace,
                              drop_u=drop_u[mine], replace_u=replace_u[mine], replace_rows=replace_rows[mine])

    def gather(self, plan: CaptionPlan, pool: PoolSlot | None = None) -> dict[str, object]:
        """The plan's rows in their storage dtype, where the tables live (``pool``: into its
        buffers for the current slot)."""
        t = self.tables

        def take(name: str, key: str, rows: np.ndarray) -> torch.Tensor:
            table = t[name]
            out = None if pool is None else pool.get(key, (len(rows),) + table.row_shape, table.torch_dtype,
                                                     table.device)
            return table.take(rows, out=out)

        host: dict[str, object] = {"plan": plan, "regions": take("regions", "regions", plan.region_index),
                                   "pooled_text": take("pooled", "pooled", plan.captions)}
        if self.has_tokens:
            host["tokens"] = take("tokens", "tokens", plan.token_src)
        if self.has_global:
            host["global_image"] = take("global", "global", plan.images)
        return host

    def finalize(self, host: dict[str, object], device: torch.device | str | None = None,
                 pool: PoolSlot | None = None) -> dict[str, torch.Tensor]:
        """The batch on ``device`` (default: where the tables are), float32, dropped regions
        zeroed, tokens padded."""
        plan: CaptionPlan = host["plan"]  # type: ignore[assignment]
        device = torch.device(device) if device is not None else self.table_device
        b, rmax = plan.region_mask.shape

        def to_float(key: str, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            x = x.to(device, non_blocking=True).view(shape)
            if pool is None or device.type != "cpu":
                return x.to(torch.float32)
            return pool.get(key + "_f32", shape, torch.float32, device).copy_(x)

        mask = torch.from_numpy(plan.region_mask).to(device, non_blocking=True)
        regions = host["regions"]
        regions = to_float("regions", regions, (b, rmax) + tuple(regions.shape[1:]))  # type: ignore[union-attr]
        if self.region_dropout > 0:
            regions.mul_(mask.unsqueeze(-1))
        batch = {"regions": regions, "region_mask": mask, "region_lengths": mask.sum(1)}
        pooled = host["pooled_text"]
        batch["pooled_text"] = to_float("pooled", pooled, tuple(pooled.shape))  # type: ignore[union-attr]
        if self.has_tokens:
            tokens = host["tokens"]
            lmax = plan.token_mask.shape[1]
            dim = tokens.shape[-1]  # type: ignore[union-attr]
            padded = torch.zeros((b * lmax, dim), dtype=torch.float32, device=device)
            dest = torch.from_numpy(plan.token_dest).to(device, non_blocking=True)
            padded.index_copy_(0, dest, tokens.to(device, non_blocking=True).to(torch.float32))  # type: ignore
            tmask = torch.from_numpy(plan.token_mask).to(device, non_blocking=True)
            batch.update(tokens=padded.view(b, lmax, dim), token_mask=tmask, token_lengths=tmask.sum(1))
        if self.has_global:
            g = host["global_image"]
            batch["global_image"] = to_float("global", g, tuple(g.shape))  # type: ignore[union-attr]
        batch["image_ids"] = torch.from_numpy(plan.images).to(device, non_blocking=True)
        batch["text_ids"] = torch.from_numpy(plan.captions).to(device, non_blocking=True)
        return batch
