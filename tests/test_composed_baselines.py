"""The closed-form ridge of benchmarks/composed_baselines.py against a naive solution."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def load_baselines():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "composed_baselines.py"
    spec = importlib.util.spec_from_file_location("composed_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("alpha", [0.0, 0.3, 10.0])
def test_fit_ridge_matches_an_augmented_least_squares(alpha):
    """Ridge with an unpenalised intercept = least squares of [x, 1] on y with sqrt(alpha) I rows on W only."""
    cb = load_baselines()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)) + 3.0
    y = x @ rng.standard_normal((5, 3)) + 2.0 + 0.1 * rng.standard_normal((40, 3))
    w, b = cb.fit_ridge(x, y, alpha)
    a = np.vstack([np.hstack([x, np.ones((40, 1))]), np.hstack([np.sqrt(alpha) * np.eye(5), np.zeros((5, 1))])])
    target = np.vstack([y, np.zeros((5, 3))])
    sol = np.linalg.lstsq(a, target, rcond=None)[0]
    np.testing.assert_allclose(w, sol[:5], atol=1e-8)
    np.testing.assert_allclose(b, sol[5], atol=1e-8)


def test_ridge_shrinks_toward_the_mean_offset():
    cb = load_baselines()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 2))
    w, b = cb.fit_ridge(x, y, 1e9)
    assert np.abs(w).max() < 1e-6
    np.testing.assert_allclose(b, y.mean(0), atol=1e-6)
