"""Evaluation encoders of a method that delegates them to its ``encoders`` towers."""
from __future__ import annotations

from typing import Any

import torch


class TowerEncoders:
    """Mixin for a :class:`~featvlr.methods.base.Method` whose ``self.encoders`` module
    (e.g. :class:`~featvlr.methods.vse.VSEEncoders`) embeds images and texts.

    Listed before ``Method`` in the bases (``class VSE(TowerEncoders, Method)``) so that its
    ``encode_images`` / ``encode_texts`` are the ones the evaluator calls.
    """

    encoders: Any

    def encode_images(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.encoders.encode_images(batch)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.encoders.encode_texts(batch)
