"""The one rule for choosing a torch device from a config or command-line value."""
from __future__ import annotations

import torch

from featvlr.core.errors import ConfigError


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else CPU; ``"cuda[:i]"`` fails clearly without CUDA."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
