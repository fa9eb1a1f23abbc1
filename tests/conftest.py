"""Shared pytest fixtures."""
from __future__ import annotations

import os
import subprocess
import sys

# Tests use tiny tensors: one thread each avoids OpenMP oversubscription when tests spawn
# processes (the DDP checks) or share the cores with other work. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_encoder():
    """The default all-MiniLM-L6-v2 :class:`TextEncoder` on CPU, loaded once per session."""
    from featvlr.extract.text_encoder import TextEncoder

    return TextEncoder(device="cpu", batch_size=16)


def run_cli_main(args, capsys=None) -> tuple[int, str, str]:
    """``featvlr <args>`` in this process (``featvlr.cli.main``): exit status, stdout, stderr."""
    from featvlr.cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr() if capsys is not None else None
    return code, out.out if out else "", out.err if out else ""


def run_cli_process(*args, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m featvlr.cli <args>`` in a fresh interpreter, as a user runs it (text output captured)."""
    return subprocess.run([sys.executable, "-m", "featvlr.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def cli(capsys):
    """Run the command line in this process: ``code, out, err = cli("extract", "precomp", ...)``."""
    return lambda *args: run_cli_main(args, capsys)


@pytest.fixture
def cli_process():
    """Run the command line in a fresh interpreter: ``proc = cli_process("info", path, cwd=...)``."""
    return run_cli_process
