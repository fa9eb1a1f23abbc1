"""``mlcl`` against the ``combiner`` baseline on the demo composed split, over several seeds.

Trains ``configs/demo_combiner.yaml`` and ``configs/demo_mlcl.yaml`` once per seed (or reuses
finished runs), then prints, per method, the mean and standard deviation over seeds of:

- ``val``: the CIRR metrics of best.pt on the val split (the split that chose it, so
  optimistic), R@1/5/10/50 and Rsubset@1/2/3;
- ``test1``: the same metrics of the CIRR test-server files that the final evaluation wrote
  (``eval/submission``), scored here against the demo's ground truth
  (``<data>/truth/cirr_test1_edits.json``) the way the CIRR server scores them: the target's
  position in the top-50 list (reference removed) and in the top-3 subset list.

    python -m benchmarks.experiments.compare_mlcl_demo [--cache features/demo_composed.h5]
        [--runs runs/compare_mlcl] [--seeds 0 1 2] [--reuse] [--set train.epochs=60 ...]
        [--methods combiner mlcl] [--tag _lr2x] [--drop mid] [--levels] [--json FILE]

``--tag`` suffixes the run folders (``<method><tag>_s<seed>``) so that sweeps with ``--set``
keep their runs apart. ``--drop NAME`` (repeatable; ``high``, ``mid``, ``low``,
``sscl_mid``, ``sscl_high``) removes that term ``NAME_loss`` from MLCL's training loss (an
ablation made here, the method is unchanged). ``--levels`` also scores, for every MLCL
run, best.pt's inference query built from a subset of its levels (see :data:`LEVEL_QUERIES`).
``--json`` writes every run's numbers.

The demo data folder defaults to ``<cache folder>/demo_data`` (where the trainer builds it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from benchmarks.common import (
    CIRR_KEYS,
    CONFIGS,
    epoch_records,
    pin_threads,
    print_cirr_table,
    read_truth,
    score_lists,
    truth_file,
)
from featvlr.config import load_config

METHODS = ("combiner", "mlcl")
LOSS_TERMS = ("high", "mid", "low", "sscl_mid", "sscl_high")
# Inference queries from MLCL's levels: name -> weights of (high, mid, low); "w" and "2-w" are the
# learned branch weight and its complement (the "matched" weighting, the default query).
LEVEL_QUERIES = {
    "all (matched)": ("w", "2-w", 1), "high": (1, 0, 0), "mid": (0, 1, 0), "low": (0, 0, 1),
    "high+mid": ("w", "2-w", 0), "high+low": ("w", 0, 1), "mid+low": (0, "2-w", 1),
}


def score_submission(recall_file: Path, subset_file: Path, truth_path: Path) -> dict[str, float]:
    """CIRR server metrics of two submission files against ``[{pairid, target}, ...]``."""
    return score_lists(json.loads(recall_file.read_text(encoding="utf-8")),
                       json.loads(subset_file.read_text(encoding="utf-8")), read_truth(truth_path))


@contextlib.contextmanager
def dropped_terms(names: list[str]):
    """MLCL's loss without the terms ``<name>_loss`` for ``name`` in ``names`` (an ablation)."""
    from featvlr.losses.mlcl import MultiLevelContrastiveLoss

    unknown = sorted(set(names) - set(LOSS_TERMS))
    if unknown:
        raise SystemExit(f"--drop: unknown term(s) {unknown} (one of {', '.join(LOSS_TERMS)})")
    original = MultiLevelContrastiveLoss.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        for name in names:
            out.pop(f"{name}_loss", None)
        return out

    MultiLevelContrastiveLoss.forward = forward if names else original
    try:
        yield
    finally:
        MultiLevelContrastiveLoss.forward = original


def run(method: str, seed: int, cache: Path, runs: Path, overrides: list[str], reuse: bool, tag: str = "",
        drop: list[str] | None = None) -> Path:
    from featvlr.training.trainer import train

    run_dir = runs / f"{method}{tag}_s{seed}"
    if reuse and (run_dir / "eval" / "test1.json").exists():
        return run_dir
    cfg = load_config(CONFIGS / f"demo_{method}.yaml",
                      [f"data.cache={cache}", f"train.seed={seed}", "train.progress=false", *overrides])
    with dropped_terms(drop if method == "mlcl" else []):
        train(cfg, run_dir)
    return run_dir


def best_val(run_dir: Path) -> dict[str, float]:
    """best.pt's val metrics, its epoch (``epoch``) and the number of epochs run (``epochs``)."""
    epochs = [r for r in epoch_records(run_dir) if "val/composed/arithmetic_mean" in r]
    best = max(epochs, key=lambda r: r["val/composed/arithmetic_mean"])  # first of equals, as the trainer
    return {**{k: best[f"val/composed/{k}"] for k in CIRR_KEYS}, "epoch": best["epoch"],
            "epochs": epochs[-1]["epoch"]}


def level_scores(run_dir: Path, cache: Path, truth: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{query name: {"val": metrics, "test1": metrics}}`` of best.pt's level queries (:data:`LEVEL_QUERIES`)."""
    import torch

    from featvlr.cache.store import FeatureStore
    from featvlr.data.composed import iter_query_batches
    from featvlr.evaluation.composed import cirr_submission, evaluate_composed
    from featvlr.evaluation.embed import embed_composed_split
    from featvlr.inference.loading import load_method
    from featvlr.modules.combiner import unit

    method, _ = load_method(run_dir, which="best")
    store = FeatureStore(cache)
    w = float(method.combiner.branch_weight().detach())
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in LEVEL_QUERIES}
    for split_name in ("val", "test1"):
        split = store.split(split_name)
        with torch.no_grad():
            _, gallery = embed_composed_split(method, split)
            levels = [method.combiner.levels(*method.inputs(b)) for b in iter_query_batches(split, 512)]
            high, mid, low = (torch.cat([getattr(lv, k) for lv in levels]) for k in ("high", "mid", "low"))
        for name, weights in LEVEL_QUERIES.items():
            a = [w if x == "w" else 2 - w if x == "2-w" else float(x) for x in weights]
            q = unit(a[0] * high + a[1] * mid + a[2] * low)
            comp = split.composed()
            if split_name == "val":
                res = evaluate_composed(q, gallery, comp, protocol="cirr")
                out[name]["val"] = {k: res[f"composed/{k}"] for k in CIRR_KEYS}
            else:
                recall, subset = cirr_submission(q, gallery, comp, split.image_ids())
                out[name]["test1"] = score_lists(recall, subset, truth)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="features/demo_composed.h5")
    ap.add_argument("--data", default=None, help="demo data folder (default: <cache folder>/demo_data)")
    ap.add_argument("--runs", default="runs/compare_mlcl")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--tag", default="", help="suffix of the run folders")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose eval/test1.json exists")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--drop", action="append", default=[], help="MLCL loss term to leave out (repeatable)")
    ap.add_argument("--levels", action="store_true", help="also score MLCL's level queries")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    args = ap.parse_args()
    pin_threads(args.threads)
    cache, runs = Path(args.cache), Path(args.runs)
    truth = truth_file(cache, args.data)
    table: dict[str, dict[str, list[dict[str, float]]]] = {}
    levels: dict[str, dict[str, list[dict[str, float]]]] = {}
    record: dict[str, dict] = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = run(method, seed, cache, runs, args.overrides, args.reuse, args.tag, args.drop)
            sub = run_dir / "eval" / "submission"
            res = table.setdefault(method + args.tag, {"val": [], "test1": []})
            res["val"].append(best_val(run_dir))
            res["test1"].append(score_submission(sub / "recall_submission_test1.json",
                                                 sub / "recall_subset_submission_test1.json", truth))
            record[run_dir.name] = {"val": res["val"][-1], "test1": res["test1"][-1]}
            if args.levels and method == "mlcl":
                per = level_scores(run_dir, cache, read_truth(truth))
                record[run_dir.name]["levels"] = per
                for name, splits in per.items():
                    for split, metrics in splits.items():
                        levels.setdefault(name, {"val": [], "test1": []})[split].append(metrics)
    print(f"seeds {args.seeds}; mean ± std over seeds; overrides {args.overrides}; dropped {args.drop}")
    print_cirr_table(table, "method")
    for name, res in table.items():
        ep = [r["epoch"] for r in res["val"]]
        print(f"{name}: best.pt at epochs {ep} of {res['val'][0]['epochs']}")
    if levels:
        print(f"\nMLCL{args.tag} best.pt, inference query from a subset of its levels")
        print_cirr_table(levels, "query")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"overrides": args.overrides, "drop": args.drop, "tag": args.tag,
                                               "runs": record}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
