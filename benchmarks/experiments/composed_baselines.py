"""Simple composed-retrieval baselines on a cached CIRR-layout split, scored like the trained methods.

Two baselines over the same frozen features as ``combiner`` and ``mlcl``:

- ``ridge``: the edit as a closed-form ridge regression. With unit-norm image features
  ``r`` (reference) and ``y`` (target) and the pooled modifier text ``t``, fit
  ``y - r ~ t W + b`` on the train split; the query is ``r + t W + b``. ``ridge+ref`` also
  regresses on ``r`` (``[t; r] W + b``). The ridge ``alpha`` is chosen on val by the
  arithmetic mean of the 7 CIRR recalls (the trainer's selection metric);
- ``mlp``: a residual MLP combiner ``q = normalize(r + MLP([r; t]))`` (one hidden layer)
  trained with the Combiner's in-batch cross-entropy (scale 100) on the same batches
  (:class:`featvlr.data.composed.ComposedBatches`), AdamW, best epoch chosen on val like
  the trainer's best.pt; ``--seeds`` runs.

Metrics: val through :func:`featvlr.evaluation.composed.evaluate_composed` (CIRR protocol:
reference removed from the gallery, Rsubset@K within the image set) and test1 through the
CIRR test-server lists (:func:`featvlr.evaluation.composed.cirr_submission`) scored against
the demo's ground truth, exactly as ``benchmarks/experiments/compare_mlcl_demo.py`` scores the
trained methods (:func:`benchmarks.common.score_lists`).

    python -m benchmarks.experiments.composed_baselines --cache features/demo_composed.h5 [--data DIR]
        [--seeds 0 1 2] [--epochs 60] [--lr 5e-4] [--hidden 1024] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import CIRR_KEYS, pin_threads, print_cirr_table, read_truth, score_lists, truth_file

ALPHAS = tuple(float(a) for a in np.logspace(-6, 3, 19))


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` minimising ``|x W + b - y|^2 + alpha |W|^2`` (the intercept is not penalised)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    return w, my - mx @ w


def unit_np(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def split_arrays(split, *, all_variants: bool = False) -> dict[str, np.ndarray]:
    """Unit-norm reference ``r``, target ``y`` (zeros without one), text ``t`` and the query row of each."""
    from featvlr.data.composed import read_queries

    q = read_queries(split)
    g = unit_np(np.asarray(split.global_features(), dtype=np.float64))
    p = np.asarray(split.pooled(), dtype=np.float64)
    rows, texts = [], []
    for v in range(q.text.shape[1] if all_variants else 1):
        ok = np.nonzero(q.text[:, v] >= 0)[0]
        rows.append(ok)
        texts.append(q.text[ok, v])
    rows, texts = np.concatenate(rows), np.concatenate(texts)
    tgt = q.target[rows]
    y = np.where(tgt[:, None] >= 0, g[np.maximum(tgt, 0)], 0.0)
    return {"r": g[q.reference[rows]], "y": y, "t": p[texts], "row": rows, "target": tgt, "gallery": g}


def score(query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, split, truth: dict | None
          ) -> dict[str, float]:
    """The 7 CIRR recalls: from the split's targets (val) or, when it has none, from ``truth`` (test1)."""
    from featvlr.evaluation.composed import cirr_submission, evaluate_composed

    q = torch.as_tensor(np.asarray(query, dtype=np.float32))
    g = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    comp = split.composed()
    res = evaluate_composed(q, g, comp, protocol="cirr")
    if res:
        return {k: res[f"composed/{k}"] for k in CIRR_KEYS}
    if truth is None:
        return {}
    recall, subset = cirr_submission(q, g, comp, split.image_ids())
    return score_lists(recall, subset, truth)


def ridge_baseline(store, truth, *, with_reference: bool = False) -> dict:
    train, val, test = (split_arrays(store.split(s), all_variants=(s == "train")) for s in ("train", "val", "test1"))

    def design(a):
        return np.hstack([a["t"], a["r"]]) if with_reference else a["t"]

    best = None
    for alpha in ALPHAS:
        w, b = fit_ridge(design(train), train["y"] - train["r"], alpha)
        res = score(val["r"] + design(val) @ w + b, val["gallery"], store.split("val"), None)
        mean = statistics.fmean(res.values())
        if best is None or mean > best[0]:
            best = (mean, alpha, w, b, res)
    _, alpha, w, b, val_res = best
    test_res = score(test["r"] + design(test) @ w + b, test["gallery"], store.split("test1"), truth)
    return {"alpha": alpha, "val": val_res, "test1": test_res}


class ResidualMLP(torch.nn.Module):
    """``normalize(r + Linear(Drop(ReLU(Linear([r; t])))))``."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(image_dim + text_dim, hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(dropout), torch.nn.Linear(hidden, image_dim))

    def forward(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(r + self.net(torch.cat([r, t], -1)), dim=-1)


def mlp_baseline(store, truth, *, seed: int, epochs: int, lr: float, hidden: int, dropout: float,
                 batch_size: int = 256) -> dict:
    from featvlr.data.composed import ComposedBatches
    from featvlr.losses.mlcl import ComposedContrastiveLoss

    torch.manual_seed(seed)
    train = store.split("train").load_in_memory()
    batches = ComposedBatches(train, batch_size=batch_size, seed=seed, use_aug=False)
    val, test = (split_arrays(store.split(s)) for s in ("val", "test1"))
    model = ResidualMLP(val["r"].shape[1], val["t"].shape[1], hidden, dropout)
    loss_fn = ComposedContrastiveLoss(scale=100.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def queries(a):
        model.eval()
        with torch.no_grad():
            return model(torch.as_tensor(a["r"], dtype=torch.float32), torch.as_tensor(a["t"], dtype=torch.float32))

    best = None
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        model.train()
        for i in range(len(batches)):
            b = batches[i]
            r = torch.nn.functional.normalize(torch.as_tensor(b["reference_image"]).float(), dim=-1)
            loss = loss_fn(model(r, torch.as_tensor(b["pooled_text"]).float()),
                           torch.as_tensor(b["target_image"]).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        res = score(queries(val), val["gallery"], store.split("val"), None)
        mean = statistics.fmean(res.values())
        if best is None or mean > best[0]:  # first of equals, as the trainer's best.pt
            best = (mean, epoch + 1, res, score(queries(test), test["gallery"], store.split("test1"), truth))
    return {"epoch": best[1], "val": best[2], "test1": best[3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="features/demo_composed.h5")
    ap.add_argument("--data", default=None, help="demo data folder (default: <cache folder>/demo_data)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    pin_threads()
    from featvlr.cache.store import FeatureStore

    cache = Path(args.cache)
    truth_path = truth_file(cache, args.data)
    truth = read_truth(truth_path) if truth_path.exists() else None
    store = FeatureStore(cache)
    table: dict[str, dict[str, list[dict[str, float]]]] = {}
    record: dict[str, object] = {}
    for name, with_ref in (("ridge", False), ("ridge+ref", True)):
        res = ridge_baseline(store, truth, with_reference=with_ref)
        record[name] = res
        table[f"{name} a={res['alpha']:g}"] = {"val": [res["val"]], "test1": [res["test1"]] if res["test1"] else []}
    mlp = [mlp_baseline(store, truth, seed=s, epochs=args.epochs, lr=args.lr, hidden=args.hidden,
                        dropout=args.dropout) for s in args.seeds]
    record["mlp"] = mlp
    table[f"mlp e{args.epochs}"] = {"val": [m["val"] for m in mlp], "test1": [m["test1"] for m in mlp if m["test1"]]}
    print(f"{cache}; ridge: closed form, alpha on val; mlp: seeds {args.seeds}, mean ± std, best epochs "
          f"{[m['epoch'] for m in mlp]} of {args.epochs}")
    print_cirr_table(table, "baseline")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
