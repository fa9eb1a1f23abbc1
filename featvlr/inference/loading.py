"""Loading a trained run's method: above the methods, so no method reaches the registry.

:func:`load_method` rebuilds a method from a run folder or checkpoint. The trainer hands it to
a method's :meth:`~featvlr.methods.base.Method.prepare` and
:meth:`~featvlr.methods.base.Method.attach_runs` as ``load_run`` (GLS's stage-1 run, CoVLR's
reference, RVLR's teacher), so methods never load runs by themselves.
"""
from __future__ import annotations

from pathlib import Path

import torch

from featvlr.core.checkpoint import load_checkpoint, resolve_checkpoint
from featvlr.core.errors import InputError


def load_method(path: str | Path, device: str | torch.device = "cpu", which: str = "best"):
    """Rebuild a trained method from a run folder or checkpoint: ``(method, config)``.

    The method is in eval mode on ``device``.
    """
    from featvlr.config import config_from_dict
    from featvlr.methods.base import FeatureDims
    from featvlr.methods.registry import create_method

    ckpt_path = resolve_checkpoint(path, which)
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"])
    dims = FeatureDims(**ckpt["dims"])
    method = create_method(cfg, dims=dims)
    try:
        method.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise InputError(ckpt_path, f"weights do not fit method {cfg.method!r}: {exc}") from None
    method.to(device).eval()
    return method, cfg


__all__ = ["load_method"]
