"""Atomic file writes: a temporary name beside the target, ``os.replace``-d on success.

Every file featvlr writes for a user (caches, checkpoints, configs, results, rankings,
teacher embeddings, plots) goes through :func:`atomic_path`, so an interrupted or failed
write never leaves a file that looks finished::

    with atomic_path(run_dir / "eval" / "test.json") as tmp:
        tmp.write_text(json.dumps(record))
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NPY_MAGIC = b"\x93NUMPY"


def has_npy_header(path: str | os.PathLike) -> bool:
    """Whether the file starts with the ``.npy`` header (``numpy.save``'s magic string)."""
    with open(path, "rb") as fh:
        return fh.read(len(NPY_MAGIC)) == NPY_MAGIC


def map_npy(path: Path, contents: str):
    """Memory-map a ``.npy`` of numbers, or raise :class:`~featvlr.core.errors.InputError` naming the
    problem: no ``.npy`` header (``contents`` says what to ``numpy.save``), pickled Python
    objects, or a truncated file."""
    import numpy as np

    from featvlr.core.errors import InputError

    if not has_npy_header(path):
        raise InputError(path, "not a numpy array file: it does not start with the .npy header (save the "
                               f"{contents} with numpy.save)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc):
            raise InputError(path, "not a numpy array file of numbers: it holds Python objects") from None
        raise InputError(path, f"not a readable .npy array: {exc}") from None
    except Exception as exc:  # truncated
        raise InputError(path, f"not a readable .npy array (truncated?): {exc}") from None


def partial_name(path: str | os.PathLike) -> Path:
    """The temporary name used while ``path`` is written: ``<name>.<pid>.partial<suffix>``.

    The suffix is kept so that writers which choose a format by extension (``np.savez``,
    matplotlib) write the same format; the pid keeps concurrent writers apart.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.{os.getpid()}.partial{path.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (:func:`partial_name`) in ``folder`` whose writer is gone.

    A writer killed outright (SIGKILL, power loss) cannot remove its temporary file; the
    next process that owns the folder calls this. Files of a live writer are kept. Returns
    what was removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob("*.partial*"):
        head = path.name.rsplit(".partial", 1)[0]
        pid = head.rsplit(".", 1)[-1]
        if path.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto ``path`` when the block succeeds.

    The parent folder is created. On an exception (or a missing temporary file) the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder ``<name>.partial`` beside ``path`` to fill; when the block
    succeeds it takes the place of ``path``.

    A stale ``<name>.partial`` is removed first. An existing ``path`` is moved to
    ``<name>.old``, the new folder renamed onto ``path``, then the old one deleted. On an
    exception the partial folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(partial, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
