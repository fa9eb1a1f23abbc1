"""The training data path: batches equal a per-caption reference on every read path, the
stream gives the same batches with or without prefetch, and placement follows memory."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.data import BatchStream, CaptionBatches
from featvlr.data.rows import choose_placement, open_table

N_IMG, R, D, DT = 40, 7, 12, 10


def write_cache(path: Path, *, layout: str, dtype=np.float16, seed: int = 0) -> Path:
    """A cache with variable region counts, ragged tokens and a global vector, its big
    datasets stored ``contiguous``, ``chunked`` (by rows) or ``compressed``."""
    rng = np.random.default_rng(seed)
    n_txt = 5 * N_IMG
    tok_len = rng.integers(1, 9, size=n_txt)
    offsets = np.concatenate([[0], np.cumsum(tok_len)]).astype(np.int64)
    arrays = {
        "images/train/regions": rng.standard_normal((N_IMG, R, D)).astype(dtype),
        "texts/train/tokens": rng.standard_normal((int(offsets[-1]), DT)).astype(dtype),
        "texts/train/pooled": rng.standard_normal((n_txt, DT)).astype(dtype),
        "images/train/global": rng.standard_normal((N_IMG, 6)).astype(dtype),
    }
    with CacheWriter(path, text_encoder="synthetic", text_dim=DT) as w:
        for key, arr in arrays.items():
            if layout == "compressed":
                w.h5.create_dataset(key, data=arr, chunks=(3,) + arr.shape[1:], compression="gzip")
            else:
                w.write(key, arr, chunked=layout == "chunked")
        w.write("images/train/lengths", rng.integers(1, R + 1, size=N_IMG).astype(np.int32))
        w.write("texts/train/offsets", offsets)
        w.write("texts/train/image_index", np.repeat(np.arange(N_IMG), 5).astype(np.int64))
    return path


def reference_batch(path: Path, batches: CaptionBatches, b: int) -> dict[str, np.ndarray]:
    """Batch ``b`` built caption by caption from whole arrays, as the data path documents it."""
    with h5py.File(path, "r") as h5:
        regions = h5["images/train/regions"][:].astype(np.float32)
        lengths = h5["images/train/lengths"][:]
        tokens = h5["texts/train/tokens"][:].astype(np.float32)
        offsets = h5["texts/train/offsets"][:]
        pooled = h5["texts/train/pooled"][:].astype(np.float32)
        glob = h5["images/train/global"][:].astype(np.float32)
        index = h5["texts/train/image_index"][:]
    perm = np.random.default_rng([batches.seed, batches.epoch]).permutation(len(index))
    caps = perm[b * batches.batch_size:(b + 1) * batches.batch_size]
    share = batches.batch_size // batches.world_size
    draws = np.random.default_rng([batches.seed, batches.epoch, b]).random((batches.batch_size, R))
    mine = slice(batches.rank * share, (batches.rank + 1) * share)
    caps, draws = caps[mine], draws[mine]
    kept_lists = []
    for i, c in enumerate(caps):
        img = index[c]
        kept = [j for j in range(lengths[img]) if batches.region_dropout == 0 or draws[i, j] > batches.region_dropout]
        kept_lists.append(kept or [0])
    rmax = max(len(k) for k in kept_lists)
    out_regions = np.zeros((len(caps), rmax, D), np.float32)
    out_mask = np.zeros((len(caps), rmax), bool)
    for i, (c, kept) in enumerate(zip(caps, kept_lists)):
        out_regions[i, :len(kept)] = regions[index[c], kept]
        out_mask[i, :len(kept)] = True
        if batches.region_dropout == 0:  # no dropout: the stored padding is passed through
            out_regions[i, len(kept):] = regions[index[c], len(kept):rmax]
    lens = [min(offsets[c + 1] - offsets[c], batches.max_tokens or 10**9) for c in caps]
    lmax = max(max(lens), 1)
    out_tokens = np.zeros((len(caps), lmax, DT), np.float32)
    for i, (c, n) in enumerate(zip(caps, lens)):
        out_tokens[i, :n] = tokens[offsets[c]:offsets[c] + n]
    return {"regions": out_regions, "region_mask": out_mask, "tokens": out_tokens,
            "token_mask": np.arange(lmax)[None, :] < np.array(lens)[:, None], "pooled_text": pooled[caps],
            "global_image": glob[index[caps]], "image_ids": index[caps], "text_ids": caps,
            "region_lengths": out_mask.sum(1), "token_lengths": np.array(lens)}


@pytest.mark.parametrize("layout,placement", [("contiguous", "disk"), ("chunked", "disk"), ("compressed", "disk"),
                                              ("contiguous", "memory")])
@pytest.mark.parametrize("dropout,max_tokens", [(0.3, 0), (0.0, 4)])
def test_batches_equal_the_reference(tmp_path, layout, placement, dropout, max_tokens):
    path = write_cache(tmp_path / "c.h5", layout=layout)
    split = FeatureStore(path).split("train")
    batches = CaptionBatches(split, batch_size=16, seed=3, region_dropout=dropout, max_tokens=max_tokens,
                             placement=placement)
    expected_kind = {"contiguous": "tensor", "chunked": "bytes", "compressed": "h5"}[layout]
    table = batches.tables["regions"]
    kind = "tensor" if table.tensor is not None else ("bytes" if table._bytes is not None else "h5")
    assert kind == (expected_kind if placement == "disk" else "tensor")
    for epoch in (0, 2):
        batches.set_epoch(epoch)
        for b in range(len(batches)):
            got = batches[b]
            want = reference_batch(path, batches, b)
            assert set(got) == set(want)
            for key, value in want.items():
                assert got[key].dtype == torch.from_numpy(np.asarray(value)).dtype or key.endswith("lengths"), key
                np.testing.assert_array_equal(got[key].numpy(), value, err_msg=key)


def test_rank_shares_rebuild_the_global_batch(tmp_path):
    path = write_cache(tmp_path / "c.h5", layout="contiguous")
    split = FeatureStore(path).split("train")
    whole = CaptionBatches(split, batch_size=16, seed=1, region_dropout=0.4)[1]
    parts = [CaptionBatches(split, batch_size=16, seed=1, region_dropout=0.4, rank=r, world_size=2)[1] for r in (0, 1)]
    np.testing.assert_array_equal(torch.cat([p["text_ids"] for p in parts]).numpy(), whole["text_ids"].numpy())
    for p, rows in zip(parts, (slice(0, 8), slice(8, 16))):
        n = p["regions"].shape[1]
        np.testing.assert_array_equal(p["regions"].numpy(), whole["regions"][rows, :n].numpy())


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_stream_gives_the_same_batches_with_reused_buffers(tmp_path, prefetch):
    path = write_cache(tmp_path / "c.h5", layout="chunked")
    split = FeatureStore(path).split("train")
    batches = CaptionBatches(split, batch_size=8, seed=0, region_dropout=0.2, placement="disk")
    batches.set_epoch(1)
    expected = [batches[b] for b in range(len(batches))]
    stream = BatchStream(batches, "cpu", prefetch=prefetch)
    got = []
    for batch in stream:  # buffers are reused: copy what is kept past the step
        got.append({k: v.clone() for k, v in batch.items()})
    assert len(got) == len(expected) == 25
    for g, e in zip(got, expected):
        for key in e:
            assert torch.equal(g[key], e[key]), key
    assert stream.wait_s >= 0


def test_stream_raises_the_builders_error(tmp_path):
    path = write_cache(tmp_path / "c.h5", layout="contiguous")
    batches = CaptionBatches(FeatureStore(path).split("train"), batch_size=8, seed=0)

    def broken(plan, pool=None):
        raise RuntimeError("disk gone")

    batches.gather = broken
    with pytest.raises(RuntimeError, match="disk gone"):
        list(BatchStream(batches, "cpu", prefetch=2))


def test_tables_keep_the_storage_dtype(tmp_path):
    path = write_cache(tmp_path / "c.h5", layout="contiguous")
    split = FeatureStore(path).split("train")
    table = open_table(split, split.k_regions, "disk", torch.device("cpu"), region_rows=True)
    rows = table.take(np.array([5, 0, 5]))
    assert rows.dtype == torch.float16 and rows.shape == (3, D)
    with h5py.File(path, "r") as h5:
        full = h5["images/train/regions"][:].reshape(-1, D)
    np.testing.assert_array_equal(rows.numpy(), full[[5, 0, 5]])


def test_placement_follows_available_memory(monkeypatch):
    import featvlr.data.rows as rows

    monkeypatch.setattr(rows, "available_ram", lambda: 10 << 30)
    cpu = torch.device("cpu")
    assert choose_placement(4 << 30, cpu) == "memory"
    assert choose_placement(6 << 30, cpu) == "disk"
    assert choose_placement(6 << 30, cpu, in_memory="yes") == "memory"
    assert choose_placement(1 << 20, cpu, in_memory="no") == "disk"
    monkeypatch.setattr(rows, "free_device_memory", lambda device: 40 << 30)
    gpu = torch.device("cuda", 0)
    assert choose_placement(16 << 30, gpu) == "device"
    assert choose_placement(24 << 30, gpu) == "memory" or choose_placement(24 << 30, gpu) == "disk"
    assert choose_placement(16 << 30, gpu, on_device="no") == "disk"
