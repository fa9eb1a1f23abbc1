"""Feature-level text augmentation (data.token_dropout, data.token_replace): off changes
nothing, on equals a per-caption reference, and the batches do not depend on the ranks."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from test_data_path import write_cache

from featvlr.cache.store import FeatureStore
from featvlr.config import load_config
from featvlr.core.errors import ConfigError
from featvlr.data import CaptionBatches
from featvlr.data.captions import augment_tokens, token_positions


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("aug") / "c.h5", layout="contiguous", dtype=np.float32)


def _batches(path, **kw):
    store = FeatureStore(path)
    return CaptionBatches(store.split("train"), batch_size=16, seed=3, region_dropout=0.2, **kw)


def test_zero_is_identity(cache):
    a, b = _batches(cache), _batches(cache, token_dropout=0.0, token_replace=0.0)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    offsets = np.array([0, 3, 5, 9])
    src, dest, mask = token_positions(offsets, np.array([2, 0, 1]))
    s2, d2, m2 = augment_tokens(src, mask)
    assert np.array_equal(src, s2) and np.array_equal(dest, d2) and np.array_equal(mask, m2)


def reference(path, batches, b):
    """Batch ``b``'s tokens built caption by caption from the documented draws."""
    with h5py.File(path, "r") as h5:
        tokens = h5["texts/train/tokens"][:]
        offsets = h5["texts/train/offsets"][:]
    caps = batches.caption_rows(b)
    rng = np.random.default_rng([batches.seed, batches.epoch, b, 1])
    shape = (batches.batch_size, int(np.diff(offsets).max()))
    drop_u, rep_u, rep_rows = rng.random(shape), rng.random(shape), rng.integers(0, int(offsets[-1]), size=shape)
    share = batches.batch_size // batches.world_size
    lo = batches.rank * share
    out = []
    for i, c in enumerate(caps):
        rows = []
        for j, row in enumerate(range(offsets[c], offsets[c + 1])):
            if rep_u[lo + i, j] < batches.token_replace:
                row = rep_rows[lo + i, j]
            if drop_u[lo + i, j] >= batches.token_dropout:
                rows.append(row)
        if not rows:  # the first token is always kept
            row = offsets[c]
            rows = [rep_rows[lo + i, 0] if rep_u[lo + i, 0] < batches.token_replace else row]
        out.append(tokens[rows])
    return out


@pytest.mark.parametrize("drop,rep", [(0.3, 0.0), (0.0, 0.5), (0.5, 0.3), (0.95, 0.2)])
def test_equals_reference(cache, drop, rep):
    batches = _batches(cache, token_dropout=drop, token_replace=rep)
    batches.set_epoch(1)
    plain = _batches(cache)
    plain.set_epoch(1)
    for b in range(len(batches)):
        got, ref = batches[b], reference(cache, batches, b)
        assert torch.equal(got["regions"], plain[b]["regions"])  # region draws untouched
        lengths = got["token_lengths"].tolist()
        assert lengths == [len(r) for r in ref]
        assert got["tokens"].shape[1] == max(lengths)
        for i, r in enumerate(ref):
            assert np.array_equal(got["tokens"][i, :lengths[i]].numpy(), r)
            assert not got["tokens"][i, lengths[i]:].any()
            assert got["token_mask"][i].tolist() == [k < lengths[i] for k in range(max(lengths))]


def test_ranks_see_the_global_batch(cache):
    one = _batches(cache, token_dropout=0.3, token_replace=0.2)
    for b in range(len(one)):
        whole = one[b]
        parts = []
        for rank in range(2):
            part = CaptionBatches(FeatureStore(cache).split("train"), batch_size=16, seed=3, region_dropout=0.2,
                                  token_dropout=0.3, token_replace=0.2, rank=rank, world_size=2)[b]
            parts.append(part)
        for rank, part in enumerate(parts):
            sl = slice(rank * 8, (rank + 1) * 8)
            n = int(part["token_lengths"].max())
            assert torch.equal(part["token_lengths"], whole["token_lengths"][sl])
            assert torch.equal(part["tokens"], whole["tokens"][sl, :n])


def test_config_ranges():
    assert load_config(None, ["data.token_dropout=0.2", "data.token_replace=0.1"]).data.token_dropout == 0.2
    for bad in ("data.token_dropout=1.0", "data.token_replace=-0.1"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])
