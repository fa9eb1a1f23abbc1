"""The closed-form ridge of benchmarks/experiments/composed_baselines.py against a naive solution."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cb(monkeypatch):
    """The script as a module of the ``benchmarks`` package, imported from the repository root
    as ``python -m benchmarks.experiments.composed_baselines`` runs it."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.experiments.composed_baselines")


@pytest.mark.parametrize("alpha", [0.0, 0.3, 10.0])
def test_fit_ridge_matches_an_augmented_least_squares(cb, alpha):
    """Ridge with an unpenalised intercept = least squares of [x, 1] on y with sqrt(alpha) I rows on W only."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)) + 3.0
    y = x @ rng.standard_normal((5, 3)) + 2.0 + 0.1 * rng.standard_normal((40, 3))
    w, b = cb.fit_ridge(x, y, alpha)
    a = np.vstack([np.hstack([x, np.ones((40, 1))]), np.hstack([np.sqrt(alpha) * np.eye(5), np.zeros((5, 1))])])
    target = np.vstack([y, np.zeros((5, 3))])
    sol = np.linalg.lstsq(a, target, rcond=None)[0]
    np.testing.assert_allclose(w, sol[:5], atol=1e-8)
    np.testing.assert_allclose(b, sol[5], atol=1e-8)


def test_ridge_shrinks_toward_the_mean_offset(cb):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 2))
    w, b = cb.fit_ridge(x, y, 1e9)
    assert np.abs(w).max() < 1e-6
    np.testing.assert_allclose(b, y.mean(0), atol=1e-6)
