"""Relation matrices within a batch and losses that match one to another.

Used by CoVLR's intra-modal structure preservation (Yang et al., "CoVLR: Coordinating
Cross-Modal Consistency and Intra-Modal Relations for Vision-Language Retrieval", ICME 2024)
and by structure-aware distillation (RVLR, TIP 2024): the relations of a student's embeddings
within one modality are pulled towards the relations of frozen reference features.

Helpers:

- :func:`relation_matrix`: ``[B, d] -> [B, B]`` pairwise relations ("cosine", "dot" or
  "euclidean", divided by a temperature).
- :func:`off_diagonal`: ``[B, B] -> [B, B-1]``, each row without its self entry.
- :func:`relation_kl`, :func:`relation_mse`, :func:`relation_mae`: distances between two
  ``[B, B]`` relation matrices over the off-diagonal pairs, optionally leaving more pairs out
  (the reference side gets no gradient).
- :class:`StructurePreservationLoss`: all of it as one ``nn.Module``.

Example::

    loss_fn = StructurePreservationLoss(relation="cosine", match="kl", temperature=0.1)
    loss = loss_fn(student_text_emb, batch["pooled_text"])  # scalar
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.core.errors import ConfigError
from featvlr.modules.precision import fp32

RELATIONS = ("cosine", "dot", "euclidean")
MATCHES = ("kl", "mse", "mae")


def relation_matrix(x: torch.Tensor, kind: str = "cosine", temperature: float = 1.0) -> torch.Tensor:
    """Pairwise relations of the rows of ``x [B, d]``: ``[B, B]``, larger means closer.

    Args:
        x: one vector per row (any scale; "cosine" normalises them first).
        kind: "cosine" (``x_i . x_j`` after L2 normalisation), "dot" (raw dot products) or
            "euclidean" (the **negative** Euclidean distance, so that larger is closer and a
            row softmax is a neighbour distribution, as for the other two).
        temperature: the relations are divided by it.
    """
    if temperature <= 0:
        raise ConfigError(f"relation temperature must be > 0, got {temperature}")
    with fp32(x) as (x32,):  # relations in float32 (or 64)
        return _relations(x32, kind) / temperature


def _relations(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        x = F.normalize(x, dim=-1)
        rel = x @ x.t()
    elif kind == "dot":
        rel = x @ x.t()
    elif kind == "euclidean":
        sq = (x * x).sum(-1)
        d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (x @ x.t())).clamp_min(0.0)
        # sqrt has an infinite derivative at 0 (the diagonal): keep it off the graph there.
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        rel = -torch.where(eye, torch.zeros_like(d2), d2.clamp_min(1e-12).sqrt())
    else:
        raise ConfigError(f"unknown relation {kind!r} ({', '.join(RELATIONS)})")
    return rel


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """``[B, B] -> [B, B-1]``: every row without its diagonal entry (order kept)."""
    n = m.shape[0]
    if m.shape != (n, n):
        raise ValueError(f"expected a square matrix, got {tuple(m.shape)}")
    if n < 2:
        return m.new_zeros(n, 0)
    return m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


_MASKED = -1.0e9  # fill for left-out relations: exp() underflows to exactly 0, no inf/nan


def _valid_pairs(student: torch.Tensor, reference: torch.Tensor, exclude_self: bool,
                 ignore: torch.Tensor | None) -> torch.Tensor:
    """``[B, B]`` bool: the pairs a relation loss compares."""
    if student.shape != reference.shape or student.ndim != 2 or student.shape[0] != student.shape[1]:
        raise ValueError(f"relation shapes differ or are not square: {tuple(student.shape)} vs "
                         f"{tuple(reference.shape)}")
    n = student.shape[0]
    valid = torch.ones(n, n, dtype=torch.bool, device=student.device)
    if exclude_self:
        valid &= ~torch.eye(n, dtype=torch.bool, device=student.device)
    if ignore is not None:
        valid &= ~ignore
    return valid


def relation_kl(student: torch.Tensor, reference: torch.Tensor, *, exclude_self: bool = True,
                ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(reference_i) || softmax(student_i))``.

    Each row of a relation matrix is turned into a distribution over the batch's other items:
    the self entry is dropped when ``exclude_self`` (it would dominate every row), and so are
    the pairs where ``ignore [B, B]`` is True (e.g. items of the same image). Rows left with
    no pair are skipped; zero when none is left. The reference gets no gradient.
    """
    valid = _valid_pairs(student, reference, exclude_self, ignore)
    rows = valid.any(1)
    if not bool(rows.any()):
        return student.sum() * 0.0
    valid = valid[rows]
    log_p_ref = F.log_softmax(reference.detach()[rows].masked_fill(~valid, _MASKED), dim=1)
    log_p_stu = F.log_softmax(student[rows].masked_fill(~valid, _MASKED), dim=1)
    terms = log_p_ref.exp() * (log_p_ref - log_p_stu)
    return terms.masked_fill(~valid, 0.0).sum(1).mean()


def _entrywise(diff: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not bool(valid.any()):
        return diff.sum() * 0.0
    return diff.masked_fill(~valid, 0.0).sum() / valid.sum()


def relation_mse(student: torch.Tensor, reference: torch.Tensor, *, exclude_self: bool = True,
                 ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference over the compared entries (off-diagonal, not ``ignore``)."""
    valid = _valid_pairs(student, reference, exclude_self, ignore)
    return _entrywise((student - reference.detach()).pow(2), valid)


def relation_mae(student: torch.Tensor, reference: torch.Tensor, *, exclude_self: bool = True,
                 ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference over the compared entries (RVLR's default distance)."""
    valid = _valid_pairs(student, reference, exclude_self, ignore)
    return _entrywise((student - reference.detach()).abs(), valid)


_MATCH_FNS = {"kl": relation_kl, "mse": relation_mse, "mae": relation_mae}


class StructurePreservationLoss(nn.Module):
    """Intra-modal structure preservation: the relations among a batch's student embeddings
    should match the relations among frozen reference features of the same items.

    CoVLR (Yang et al., ICME 2024) uses such a term as its meta-test task; RVLR (TIP 2024)
    as structure-aware distillation. Related: :func:`relation_matrix`, :func:`relation_kl`.

    Input: ``student [B, d]`` (differentiable) and ``reference [B, d']`` (any width; it is
    detached, so the reference never receives a gradient). Output: a scalar.

    - ``relation``: "cosine", "dot" or "euclidean" (see :func:`relation_matrix`), the same
      for both sides.
    - ``match``: "kl" (row-wise KL over softmax-normalised rows, reference || student),
      "mse" or "mae" (entry-wise on the off-diagonal relations).
    - ``temperature``: divides both relation matrices (sharpens the KL rows; scales MSE/MAE).
    - ``exclude_self``: drop the diagonal (default on).

    ``forward(student, reference, ignore=None)``: ``ignore [B, B]`` (bool) leaves pairs out
    of the comparison, e.g. captions of the same image, which a cross-modal loss pulls
    together on purpose.

    Example::

        loss = StructurePreservationLoss(match="kl", temperature=0.1)(t_emb, pooled_text)
    """

    def __init__(self, *, relation: str = "cosine", match: str = "kl", temperature: float = 0.1,
                 exclude_self: bool = True):
        super().__init__()
        if relation not in RELATIONS:
            raise ConfigError(f"unknown relation {relation!r} ({', '.join(RELATIONS)})")
        if match not in MATCHES:
            raise ConfigError(f"unknown relation match {match!r} ({', '.join(MATCHES)})")
        if temperature <= 0:
            raise ConfigError(f"relation temperature must be > 0, got {temperature}")
        self.relation, self.match, self.temperature = relation, match, temperature
        self.exclude_self = exclude_self

    def forward(self, student: torch.Tensor, reference: torch.Tensor,
                ignore: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            ref_rel = relation_matrix(reference, self.relation, self.temperature)
        stu_rel = relation_matrix(student, self.relation, self.temperature)
        return _MATCH_FNS[self.match](stu_rel, ref_rel, exclude_self=self.exclude_self, ignore=ignore)

    def extra_repr(self) -> str:
        return (f"relation={self.relation!r}, match={self.match!r}, temperature={self.temperature}, "
                f"exclude_self={self.exclude_self}")
