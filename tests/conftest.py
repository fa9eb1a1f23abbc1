"""Shared pytest fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def text_encoder():
    """The default all-MiniLM-L6-v2 :class:`TextEncoder` on CPU, loaded once per session."""
    from featvlr.sources.text_encoder import TextEncoder

    return TextEncoder(device="cpu", batch_size=16)
