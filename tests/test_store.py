"""The cache writer's atomicity and the reader's handling of broken files (store + `featvlr info`)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from featvlr.cache.store import CacheWriter, FeatureStore
from featvlr.core.errors import InputError


def write_small_cache(path, *, n_img=3, overwrite=False, nan=False):
    rng = np.random.default_rng(0)
    regions = rng.standard_normal((n_img, 2, 4)).astype(np.float32)
    pooled = rng.standard_normal((5 * n_img, 6)).astype(np.float32)
    if nan:
        pooled[-1, 0] = np.nan
    with CacheWriter(path, overwrite=overwrite, command="test", sources={"root": "x"}, text_encoder="enc",
                     text_dim=6) as w:
        w.write("images/test/regions", regions)
        w.write("texts/test/pooled", pooled)
        w.write("texts/test/offsets", np.zeros(5 * n_img + 1, np.int64))
        w.write("texts/test/image_index", np.arange(5 * n_img) // 5)
        w.write("texts/test/raw", [f"caption {i}" for i in range(5 * n_img)])
    return regions, pooled


def test_round_trip_and_attributes(tmp_path):
    path = tmp_path / "c.h5"
    regions, pooled = write_small_cache(path)
    store = FeatureStore(path)
    split = store.split("test")
    np.testing.assert_array_equal(split.regions(slice(None)), regions)
    np.testing.assert_array_equal(split.pooled(), pooled)
    assert store.attrs["command"] == "test" and store.attrs["sources"] == {"root": "x"}
    assert store.attrs["text_encoder"] == "enc" and store.attrs["text_dim"] == 6
    assert not (tmp_path / "c.h5.partial").exists()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_crash_inside_writer_leaves_nothing(tmp_path, exc):
    path = tmp_path / "c.h5"
    with pytest.raises(exc):
        with CacheWriter(path) as w:
            w.create("images/train/regions", (10, 2, 4), np.float16)[:5] = 1
            assert (tmp_path / "c.h5.partial").exists()
            raise exc()
    assert list(tmp_path.iterdir()) == []


def test_existing_cache_refused_and_kept_on_failed_overwrite(tmp_path):
    path = tmp_path / "c.h5"
    regions, _ = write_small_cache(path)
    with pytest.raises(InputError, match="exists already"):
        CacheWriter(path)
    with pytest.raises(RuntimeError):
        with CacheWriter(path, overwrite=True) as w:
            w.write("images/test/regions", np.zeros((1, 1, 1), np.float32))
            raise RuntimeError("crash")
    np.testing.assert_array_equal(FeatureStore(path).split("test").regions(slice(None)), regions)
    write_small_cache(path, n_img=4, overwrite=True)
    assert FeatureStore(path).split("test").n_images == 4


def test_killed_process_leaves_no_final_file(tmp_path):
    """A hard kill mid-write (no cleanup runs) leaves only the .partial, never the cache."""
    path = tmp_path / "c.h5"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from featvlr.cache.store import CacheWriter
        with CacheWriter({str(path)!r}) as w:
            w.create("images/train/regions", (100, 2, 4), np.float32)[:50] = 1
            w.h5.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert not path.exists()
    with pytest.raises(InputError, match="no such feature cache"):
        FeatureStore(path)
    write_small_cache(path)                      # the next writer replaces the stale partial
    assert path.exists() and not (tmp_path / "c.h5.partial").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_featvlr"])
def test_broken_files_are_input_errors(tmp_path, damage):
    path = tmp_path / "c.h5"
    write_small_cache(path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an hdf5 file at all" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(3)
    with pytest.raises(InputError) as info:
        FeatureStore(path)
    assert str(path) in str(info.value)


def test_validation_catches_inconsistent_and_nan(tmp_path):
    path = tmp_path / "nan.h5"
    write_small_cache(path, nan=True)
    with pytest.raises(InputError, match="NaN or inf"):
        FeatureStore(path)
    path = tmp_path / "bad_index.h5"
    with CacheWriter(path) as w:
        w.write("images/test/regions", np.zeros((2, 1, 1), np.float32))
        w.write("texts/test/pooled", np.zeros((3, 2), np.float32))
        w.write("texts/test/offsets", np.zeros(4, np.int64))
        w.write("texts/test/image_index", np.array([0, 1, 2]))
    with pytest.raises(InputError, match="points past"):
        FeatureStore(path)


def test_info_command(tmp_path, cli_process):
    path = tmp_path / "c.h5"
    write_small_cache(path)
    proc = cli_process("info", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "split test: 3 images, 15 texts" in out
    assert "images/regions" in out and "3x2x4" in out and "float32" in out
    assert "text_encoder:    enc" in out and "on disk" in out and '"root": "x"' in out
    proc = cli_process("info", path, "--json")
    info = json.loads(proc.stdout)
    assert info["splits"]["test"]["datasets"]["texts/pooled"] == {"shape": [15, 6], "dtype": "float32"}
    assert info["size_bytes"] == path.stat().st_size


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_info_on_broken_cache_exits_2_with_one_line(tmp_path, damage, cli_process):
    path = tmp_path / "c.h5"
    if damage == "truncated":
        write_small_cache(path)
        path.write_bytes(path.read_bytes()[:2000])
    proc = cli_process("info", path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvlr: error: ") and str(path) in lines[0]
    assert proc.stdout == ""


def test_an_interrupt_python_dropped_still_leaves_nothing(tmp_path):
    """A signal whose exception the interpreter swallowed (raised inside a weakref callback)
    is still honoured when the cache would be committed."""
    import signal

    from featvlr.cache.writer import CacheWriter
    from featvlr.core.interrupts import Signalled, StopSignals

    out = tmp_path / "c.h5"
    with StopSignals("raise") as stop:
        with pytest.raises(Signalled):
            with CacheWriter(out) as w:
                w.write("images/train/global", np.zeros((2, 3), np.float32))
                stop.signum = signal.SIGINT  # what the handler records before its raise is lost
    assert not out.exists() and not list(tmp_path.glob("*partial*"))
    with CacheWriter(out) as w:  # outside the block nothing is pending
        w.write("images/train/global", np.zeros((2, 3), np.float32))
    assert out.exists()
