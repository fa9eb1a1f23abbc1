"""``EvalOptions`` takes an integer where it takes a sequence of integers (``folds``, ``ks``,
``ndcg_ks``), as the evaluation functions did: ``folds=5`` is ``folds=(5,)``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.cross_modal import CrossModalScores, cross_modal_metrics
from featvlr.evaluation.options import EvalOptions

N_IMG, PER = 10, 5


def _metrics(options: EvalOptions) -> dict[str, float]:
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.normal(size=(N_IMG, 8)).astype(np.float32))
    txt = torch.repeat_interleave(img, PER, dim=0) + torch.from_numpy(rng.normal(size=(N_IMG * PER, 8)).astype(
        np.float32))
    arrays = {"txt2img": np.arange(N_IMG * PER) // PER,
              "relevance": rng.random((N_IMG * PER, N_IMG)).astype(np.float32)}
    return cross_modal_metrics(CrossModalScores(images=img, texts=txt), arrays, ["i2t", "t2i", "i2i"], options)


def test_an_int_folds_is_a_one_item_tuple():
    got, want = _metrics(EvalOptions(folds=5)), _metrics(EvalOptions(folds=(5,)))
    assert got == want and "i2t_5fold/R@1" in got and "i2t/R@1" not in got
    assert EvalOptions(folds=5).folds == (5,) and EvalOptions(folds=5) == EvalOptions(folds=(5,))


def test_ints_and_lists_of_ks_are_tuples():
    options = EvalOptions(folds=[1, np.int64(5)], ks=5, ndcg_ks=[10])
    assert (options.folds, options.ks, options.ndcg_ks) == ((1, 5), (5,), (10,))
    assert all(type(v) is int for v in options.folds)
    assert _metrics(options) == _metrics(EvalOptions(folds=(1, 5), ks=(5,), ndcg_ks=(10,)))


@pytest.mark.parametrize("field, value", [("folds", "5"), ("ks", 1.5), ("ndcg_ks", [10, 2.5]), ("folds", None),
                                          ("ks", True)])
def test_other_values_are_one_error(field, value):
    with pytest.raises(FeatvlrError, match=rf"^{field}: expected an integer or a sequence of integers, got "):
        EvalOptions(**{field: value})
