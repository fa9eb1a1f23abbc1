"""RVLR's distillation losses: representation-level and structure-aware.

Yang et al., "Rebalanced Vision-Language Retrieval Considering Structure-Aware Distillation",
IEEE TIP 2024 (code: njustkmg/TIP24-Rebalanced_Vision_Language_Retrieval).

- :class:`RepresentationDistillation`: a student embedding batch contrasted against a batch of
  (projected) teacher embeddings, soft image-id targets, one direction (the paper's
  ``L_iic`` / ``L_ttc``).
- :class:`StructureDistillation`: the student's relation matrices pulled toward a learned
  mixture ``E = lambda * T + (1 - lambda) * I`` of the teachers' text and image relations
  over off-diagonal pairs (``L_kd``), plus the two teacher-mixture terms ``|I - E|`` and
  ``|T - E|`` (``L_kdi``, ``L_kdt``); MAE (default), MSE or a row-wise 1-D Wasserstein distance.

Two deliberate differences from the paper code close its degenerate directions:
``lambda`` is ``sigmoid`` of a free parameter, so it stays in (0, 1) (the paper's raw
``nn.Parameter(0.5)`` is unconstrained); and the relation temperature ``tau2`` is fixed by
default (the paper's is learnable and unclamped, and since every relation is divided by it,
inflating ``tau2`` shrinks every structure term at no cost). ``learnable_temperature=True``
brings the learnable temperature back, clamped to ``[tau_min, tau_max]``; expect it to sit
at ``tau_max``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from featvlr.losses.infonce import ClampedTemperature, soft_cross_entropy, soft_id_targets
from featvlr.losses.structure import off_diagonal, relation_matrix
from featvlr.modules.precision import fp32

DISTANCES = ("mae", "mse", "wd")
# How relation rows are compared: "absolute" (the cosines / tau2 as they are, the paper's) or
# "standardized" (every row's off-diagonal values shifted to mean 0 and scaled to unit
# standard deviation first, so an offset or a scale of a row costs nothing).
RELATION_FORMS = ("absolute", "standardized")


def standardize_rows(m: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``[B, B] -> [B, B-1]``: the off-diagonal values of every row, shifted to mean 0 and
    divided by their standard deviation (``eps`` keeps a constant row finite).

    ``standardize_rows(a * m + b)`` equals ``standardize_rows(m)`` for any ``a > 0`` and any
    per-row offset ``b``: what is left is the order and the relative spacing of a row's
    neighbours, not where the row sits or how spread it is.
    """
    x = off_diagonal(m)
    x = x - x.mean(dim=-1, keepdim=True)
    return x / (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, u_weights: torch.Tensor | None = None,
                   v_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise 1-D Wasserstein-1 distance between empirical distributions.

    Row ``r`` of ``u [n, m_u]`` and of ``v [n, m_v]`` are two samples on the real line (with
    optional non-negative weights of the same shapes); the result ``[n]`` is
    ``integral |CDF_u(x) - CDF_v(x)| dx`` per row, the quantity
    ``scipy.stats.wasserstein_distance`` computes. Differentiable in the values (and in the
    weights).
    """
    if u.ndim != 2 or v.ndim != 2 or u.shape[0] != v.shape[0]:
        raise ValueError(f"wasserstein_1d expects [n, m] rows, got {tuple(u.shape)} and {tuple(v.shape)}")
    u_sorted, u_order = u.sort(dim=-1)
    v_sorted, v_order = v.sort(dim=-1)
    all_values = torch.cat([u, v], dim=-1).sort(dim=-1).values
    deltas = all_values.diff(dim=-1)
    points = all_values[:, :-1].detach().contiguous()

    def cdf(sorted_values, order, weights):
        idx = torch.searchsorted(sorted_values.detach().contiguous(), points, right=True)
        if weights is None:
            return idx.to(deltas.dtype) / sorted_values.shape[-1]
        cum = torch.cat([weights.new_zeros(weights.shape[0], 1), weights.gather(-1, order).cumsum(-1)], dim=-1)
        return cum.gather(-1, idx) / cum[:, -1:]

    return ((cdf(u_sorted, u_order, u_weights) - cdf(v_sorted, v_order, v_weights)).abs() * deltas).sum(-1)


def relation_distance(student: torch.Tensor, target: torch.Tensor, distance: str = "mae",
                      form: str = "absolute") -> torch.Tensor:
    """Distance between two ``[B, B]`` relation matrices over their off-diagonal entries.

    ``form="standardized"`` compares the rows after :func:`standardize_rows` (both sides).

    Unlike :func:`featvlr.losses.structure.relation_mae`, the target keeps its gradient: the
    mixture ``E`` must pass one to lambda.

    ``mae``: mean absolute difference; ``mse``: mean squared difference; ``wd``: mean over
    rows of the 1-D Wasserstein distance between the rows' off-diagonal values (a row is
    compared as a distribution of relation values, not entry by entry).
    """
    if form == "standardized":
        s, t = standardize_rows(student), standardize_rows(target)
    elif form == "absolute":
        s, t = off_diagonal(student), off_diagonal(target)
    else:
        raise ValueError(f"unknown relation form {form!r} ({', '.join(RELATION_FORMS)})")
    if distance == "mae":
        return (s - t).abs().mean()
    if distance == "mse":
        return (s - t).pow(2).mean()
    if distance == "wd":
        return wasserstein_1d(s, t).mean()
    raise ValueError(f"unknown relation distance {distance!r} ({', '.join(DISTANCES)})")


class RepresentationDistillation(ClampedTemperature):
    """Representation-level distillation of RVLR (Yang et al., TIP 2024; the paper's
    ``L_iic`` and ``L_ttc``).

    Input: L2-normalised student embeddings ``student [B, d]``, L2-normalised teacher
    embeddings already projected to the same space ``teacher [B, d]``, and ``image_ids [B]``.
    Output: a scalar, ``mean_i CE_soft(student_i . teacher^T / tau, y_i)`` where ``y_i``
    spreads the target evenly over the teacher rows that share row i's image id. One
    direction only (student rows against teacher columns), as in the paper code. ``tau``
    starts at ``temperature``; learnable (clamped to ``[tau_min, tau_max]``) when
    ``learnable``. The paper shares the ITC temperature; here the term has its own.

    Related: :class:`featvlr.losses.SoftIdInfoNCE` (both directions, image vs text).

    Example::

        loss = RepresentationDistillation()(v, F.normalize(proj(teacher_image)), image_ids)
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        with fp32(student, teacher) as (s, t):  # relations in float32
            logits = s @ t.t() / self.tau
            return soft_cross_entropy(logits, soft_id_targets(image_ids, image_ids))


class StructureDistillation(nn.Module):
    """Structure-aware distillation of RVLR (Yang et al., TIP 2024; the paper's ``L_kd``,
    ``L_kdi``, ``L_kdt``).

    Input: a list of student embedding batches ``[B, d_s]`` (each one relation matrix:
    text, image or both), the teacher text features ``[B, d_t]`` and teacher image features
    ``[B, d_i]`` of the same rows (constants: they are detached here). Every relation matrix is
    the cosine similarity matrix divided by ``tau2``; ``T`` (teacher text), ``I`` (teacher
    image), ``E = lambda * T + (1 - lambda) * I``. Output: a dict with

    - ``kd``: the mean over the student matrices of ``distance(F_s, E)``;
    - ``kdi``: ``distance(I, E)``; ``kdt``: ``distance(T, E)`` (they reach only lambda);
    - ``lam`` and ``tau2``: detached, for logging.

    ``distance`` is ``"mae"`` (the paper's default), ``"mse"`` or ``"wd"`` (row-wise 1-D
    Wasserstein, see :func:`relation_distance`), always over off-diagonal pairs.
    ``form="standardized"`` compares per-row standardised relations (:func:`standardize_rows`):
    the term then constrains which neighbours a row has and how they are spaced relative to
    each other, never the row's mean cosine or spread. ``"absolute"`` (the paper's) pulls every
    student cosine toward the mixture's value, and so the student's mean intra-modal cosine
    toward the teachers' (about 0.40 for the cached MiniLM / mean-region teachers), which on the
    retrieval embeddings themselves fixes the ranking space's geometry.
    ``lambda = sigmoid(logit)``, starting at ``init_lambda``; fixed when not
    ``learnable_lambda``. ``tau2`` is fixed at ``temperature`` unless
    ``learnable_temperature`` (then clamped to ``[tau_min, tau_max]``). See the module
    docstring for why both differ from the paper code.

    Note: with MAE, ``kdi + kdt = mean|I - T|`` whatever lambda in (0, 1), a constant that
    reaches no parameter (the teachers are detached, tau2 fixed): only ``kd`` moves lambda
    and RVLR logs the two as diagnostics by default; with MSE they pull lambda toward 1/2.

    Example::

        out = StructureDistillation(distance="mae")([t, v], teacher_text, teacher_image)
        loss = 2 * out["kd"]  # kdi, kdt: diagnostics with MAE (see the note above)
    """

    def __init__(self, *, distance: str = "mae", temperature: float = 0.07, learnable_temperature: bool = False,
                 tau_min: float = 0.01, tau_max: float = 1.0, init_lambda: float = 0.5,
                 learnable_lambda: bool = True, form: str = "absolute"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown relation distance {distance!r} ({', '.join(DISTANCES)})")
        if form not in RELATION_FORMS:
            raise ValueError(f"unknown relation form {form!r} ({', '.join(RELATION_FORMS)})")
        self.form = form
        if not 0.0 < init_lambda < 1.0:
            raise ValueError(f"init_lambda must lie in (0, 1), got {init_lambda}")
        self.distance = distance
        self.tau_min, self.tau_max = tau_min, tau_max
        log_tau = torch.tensor(math.log(temperature))
        logit = torch.tensor(math.log(init_lambda / (1.0 - init_lambda)))
        if learnable_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        if learnable_lambda:
            self.lambda_logit = nn.Parameter(logit)
        else:
            self.register_buffer("lambda_logit", logit)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.tau_min, self.tau_max)

    @property
    def lam(self) -> torch.Tensor:
        return torch.sigmoid(self.lambda_logit)

    def targets(self, teacher_text: torch.Tensor, teacher_image: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(T, I, E)``: teacher relations and their lambda-mixture, ``[B, B]`` each."""
        tau = self.tau
        rel_t = relation_matrix(teacher_text.detach(), "cosine", tau)
        rel_i = relation_matrix(teacher_image.detach(), "cosine", tau)
        lam = self.lam
        return rel_t, rel_i, lam * rel_t + (1.0 - lam) * rel_i

    def forward(self, students: list[torch.Tensor], teacher_text: torch.Tensor,
                teacher_image: torch.Tensor) -> dict[str, torch.Tensor]:
        if not students:
            raise ValueError("StructureDistillation needs at least one student embedding batch")
        with fp32(*students, teacher_text, teacher_image) as (*s, tt, ti):  # relations in float32
            return self._forward(s, tt, ti)

    def _forward(self, students: list[torch.Tensor], teacher_text: torch.Tensor,
                 teacher_image: torch.Tensor) -> dict[str, torch.Tensor]:
        rel_t, rel_i, mix = self.targets(teacher_text, teacher_image)
        tau = self.tau
        kd = torch.stack([relation_distance(relation_matrix(s, "cosine", tau), mix, self.distance, self.form)
                          for s in students]).mean()
        return {
            "kd": kd,
            "kdi": relation_distance(rel_i, mix, self.distance, self.form),
            "kdt": relation_distance(rel_t, mix, self.distance, self.form),
            "lam": self.lam.detach(),
            "tau2": tau.detach(),
        }
