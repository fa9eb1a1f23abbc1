"""Shared pytest fixtures."""
from __future__ import annotations

import os

# Tests use tiny tensors: one thread each avoids OpenMP oversubscription when tests spawn
# processes (the DDP checks) or share the cores with other work. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_encoder():
    """The default all-MiniLM-L6-v2 :class:`TextEncoder` on CPU, loaded once per session."""
    from featvlr.sources.text_encoder import TextEncoder

    return TextEncoder(device="cpu", batch_size=16)
