"""In-batch composed-retrieval cross-entropy (CLIP4Cir) and MLCL's multi-level terms.

Baldrati et al., "Conditioned and composed image retrieval combining and partially
fine-tuning CLIP-based features", CVPR-W 2022 (code: ABaldrati/CLIP4Cir); Zhao et al.,
"Multi-level contrastive learning for hybrid cross-modal retrieval", ICASSP 2024 (code:
JWargrave/MLCL).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.modules.combiner import CombinerLevels
from featvlr.modules.precision import fp32, fp32_normalize, full_precision


def in_batch_cross_entropy(query: torch.Tensor, key: torch.Tensor, scale: torch.Tensor | float, *,
                           key_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(scale * query key^T, arange(B))``, mean over rows, one direction (query -> key).

    ``query`` and ``key`` are ``[B, d]`` and already unit-norm. With ``key_ids [B]`` the
    other in-batch keys that share the positive's id (the same target image twice in a
    batch) are masked out of the denominator instead of counting as negatives. The logits
    are float32 even under autocast (half-precision inputs are promoted): at scale 100 a
    bf16 logit is off by tenths.
    """
    with fp32(query, key) as (q, k):
        if isinstance(scale, torch.Tensor):
            (scale,) = full_precision(scale)
        logits = scale * (q @ k.t())
        if key_ids is not None:
            same = key_ids.unsqueeze(1) == key_ids.unsqueeze(0)
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(query.shape[0], device=query.device)
        return F.cross_entropy(logits.float(), labels)


def _log_scale(value: float, learnable: bool) -> nn.Parameter | torch.Tensor:
    t = torch.tensor(math.log(value))
    return nn.Parameter(t) if learnable else t


class ComposedContrastiveLoss(nn.Module):
    """CLIP4Cir's Combiner loss: ``CE(s * q normalize(y)^T, arange(B))``.

    Input: unit-norm queries ``q [B, d]``, target image features ``y [B, d]`` (any norm,
    normalised here) and optional ``target_ids [B]`` (used only with
    ``mask_duplicate_targets``). Output: the scalar mean cross-entropy. The scale ``s`` is
    fixed at 100 as in CLIP4Cir unless ``learnable``.

    Related: :class:`MultiLevelContrastiveLoss` (MLCL) applies it at three query levels.

    Example::

        loss = ComposedContrastiveLoss()(combiner(ref, text), target)
    """

    def __init__(self, *, scale: float = 100.0, learnable: bool = False, mask_duplicate_targets: bool = False):
        super().__init__()
        self.mask_duplicate_targets = mask_duplicate_targets
        log_scale = _log_scale(scale, learnable)
        if isinstance(log_scale, nn.Parameter):
            self.log_scale = log_scale
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, query: torch.Tensor, target: torch.Tensor, target_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        ids = target_ids if self.mask_duplicate_targets else None
        return in_batch_cross_entropy(query, fp32_normalize(target), self.scale, key_ids=ids)


class MultiLevelContrastiveLoss(nn.Module):
    """MLCL's loss: mCCL (cross-modal, three levels) + SSCL (self-supervised, two levels).

    ``L = w CE(s f_h y^T) + (2 - w) CE(s f_c y^T) + CE(s f_s y^T)``  (mCCL)
    ``  + CE(s' n(z) n(z_aug)^T) + CE(s' f_h f_h,aug^T)``           (SSCL)

    with ``y`` the normalised target, every CE in-batch, one direction, mean, targets
    ``arange(B)`` (for SSCL: row ``i``'s positive is the augmented view of the same query).
    ``s`` and ``s'`` start at ``scale`` (100) and are learned separately when
    ``learnable_scale`` (the reference code's ``learn_t=1``; fixed otherwise); ``w`` is the
    Combiner's branch weight, passed in because inference uses it too.

    Input: :class:`~featvlr.modules.combiner.CombinerLevels` (with ``z_aug``/``high_aug``
    when ``sscl_weight > 0``), the target features ``[B, d]``, ``w`` (``[1]``) and optional
    ``target_ids [B]``. Output: a dict of weighted terms ``high_loss``, ``mid_loss``,
    ``low_loss``, ``sscl_mid_loss``, ``sscl_high_loss`` (their sum is the paper's loss) and
    the detached scales ``scale``, ``scale_sl``.

    Args:
        scale: initial value of both logit scales.
        learnable_scale: learn ``log s`` and ``log s'`` (unclamped, as in the reference code,
            unless ``max_scale`` > 0 clamps them).
        low_weight: weight of the parameter-free low-level term (1 in the paper).
        sscl_weight: weight of both SSCL terms (1 in the paper; 0 switches SSCL off).
        mask_duplicate_targets: repeated target images in a batch are not negatives of each
            other in the mCCL terms (off reproduces the reference code).
    """

    def __init__(self, *, scale: float = 100.0, learnable_scale: bool = True, max_scale: float = 0.0,
                 low_weight: float = 1.0, sscl_weight: float = 1.0, mask_duplicate_targets: bool = False):
        super().__init__()
        self.learnable_scale = learnable_scale
        self.max_scale = max_scale
        self.low_weight, self.sscl_weight = low_weight, sscl_weight
        self.mask_duplicate_targets = mask_duplicate_targets
        for name in ("log_scale", "log_scale_sl"):
            value = _log_scale(scale, learnable_scale)
            if isinstance(value, nn.Parameter):
                setattr(self, name, value)
            else:
                self.register_buffer(name, value)

    def _scale(self, log_scale: torch.Tensor) -> torch.Tensor:
        s = log_scale.exp()
        return s.clamp(max=self.max_scale) if self.max_scale > 0 else s

    @property
    def scale(self) -> torch.Tensor:
        return self._scale(self.log_scale)

    @property
    def scale_sl(self) -> torch.Tensor:
        return self._scale(self.log_scale_sl)

    def forward(self, levels: CombinerLevels, target: torch.Tensor, branch_weight: torch.Tensor,
                target_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        y = fp32_normalize(target)
        s, w = self.scale, branch_weight.reshape(())
        ids = target_ids if self.mask_duplicate_targets else None
        out = {
            "high_loss": w * in_batch_cross_entropy(levels.high, y, s, key_ids=ids),
            "mid_loss": (2 - w) * in_batch_cross_entropy(levels.mid, y, s, key_ids=ids),
        }
        if self.low_weight:
            out["low_loss"] = self.low_weight * in_batch_cross_entropy(levels.low, y, s, key_ids=ids)
        if self.sscl_weight:
            if levels.z_aug is None or levels.high_aug is None:
                raise ValueError("SSCL needs the augmented-reference views (z_aug, high_aug)")
            s_sl = self.scale_sl
            out["sscl_mid_loss"] = self.sscl_weight * in_batch_cross_entropy(
                fp32_normalize(levels.z), fp32_normalize(levels.z_aug), s_sl)
            out["sscl_high_loss"] = self.sscl_weight * in_batch_cross_entropy(levels.high, levels.high_aug, s_sl)
            out["scale_sl"] = s_sl.detach()
        out["scale"] = s.detach()
        return out
