"""flatten_numbers: the one flattening of nested configs and results."""
from featvlr.core.flatten import flatten_numbers


def test_flatten_keeps_values_and_encodes_lists():
    d = {"loss": {"margin": 0.2, "kind": "hinge"}, "eval": {"ndcg_ks": [10, 20]}, "name": None}
    assert flatten_numbers(d) == {"loss.margin": 0.2, "loss.kind": "hinge", "eval.ndcg_ks": "[10, 20]",
                                  "name": None}


def test_flatten_scalars_only_with_another_separator():
    d = {"test": {"i2t": {"R@1": 50.0, "curve": [1, 2]}, "n": 3, "ok": True, "none": None}}
    assert flatten_numbers(d, sep="/", scalars_only=True) == {"test/i2t/R@1": 50.0, "test/n": 3, "test/ok": True}
    assert flatten_numbers({"a": 1}, "run.") == {"run.a": 1}
