"""`featvlr eval` command: a thin wrapper over :func:`featvlr.app.evaluate.run_eval`."""
from __future__ import annotations

from pathlib import Path

import typer


def eval_command(
    targets: list[Path] | None = typer.Argument(None, help="Run folder or checkpoint (.pt) to evaluate; two or "
                                                "more: their ensemble (the mean of their similarity matrices).",
                                                show_default=False),
    split: str = typer.Option("test", help="Cache split to evaluate on."),
    scenarios: str = typer.Option("all", help="'all', or a comma list of i2t,t2i,i2i,t2t,i2it,t2it,composed."),
    json_path: Path | None = typer.Option(None, "--json", help="Results JSON (default: <run>/eval/<split>.json, "
                                          "or beside the --embeddings/--sims file). Plots go beside it."),
    embeddings: Path | None = typer.Option(None, help=".npz with 'images' [N, d] and 'texts' [T, d] "
                                           "(or 'queries' and 'gallery') from any model."),
    sims: Path | None = typer.Option(None, help=".npy [n_images, n_texts] similarity matrix from any model."),
    cache: Path | None = typer.Option(None, help="Feature cache: caption -> image index, relevance, composed "
                                      "data (default for a run: its config's data.cache)."),
    relevance: list[str] | None = typer.Option(None, help="[n_texts, n_images] ROUGE-L relevance FILE (float "
                                                   ".npy, flat or 2-D, or TERAN's raw float32), or KIND=FILE for "
                                                   "another kind (spice=FILE: keys *_spice); repeatable; overrides "
                                                   "the cache's."),
    folds: str | None = typer.Option(None, help="Folds, e.g. '1,5' for COCO 5K and 1K (default: from the run's "
                                     "config, else 1)."),
    ks: str = typer.Option("1,5,10", help="Recall@K cut-offs."),
    ndcg_ks: str | None = typer.Option(None, help="Linear-gain NDCG cut-offs (default 10,20,50)."),
    ndcg_exp_k: int | None = typer.Option(None, help="Exponential-gain NDCG cut-off (default 25, TERAN)."),
    t2t_without_siblings: bool = typer.Option(False, help="Also report t2t with the query's sibling captions "
                                              "removed (t2t_nosiblings)."),
    backend: str = typer.Option("exact", help="exact, or faiss-flat / faiss-ivf / faiss-hnsw (top-k lists; "
                                "R@K only)."),
    faiss_k: int = typer.Option(100, help="Top-k list length of the FAISS backend."),
    composed_protocol: str = typer.Option("auto", help="auto, cirr, fashioniq or shoes."),
    first_images: int | None = typer.Option(None, help="Also every scenario on the first N images alone (keys "
                                            "*_first1k; RVLR/CoVLR COCO 1K). Default: 1000 for a COCO run, else 0."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:i]."),
    batch_size: int | None = typer.Option(None, help="Embedding batch size (default: the run's eval.batch_size)."),
    chunk_elements: int | None = typer.Option(None, help="Most query x gallery scores held at once "
                                              "(default 50,000,000)."),
    plots: bool = typer.Option(True, help="Write the Recall@K and per-scenario PNGs."),
    examples: int = typer.Option(0, help="For a run: write <split>_examples.html beside the JSON with N seeded "
                                 "queries per scenario and their top 5: the ground truth's rank (i2t, t2i, "
                                 "composed), each hit's relevance grade beside the gallery's best grades (i2i, t2t, "
                                 "i2it, t2it). 0: none."),
    submission: Path | None = typer.Option(None, help="Score CIRR test-server files instead: the "
                                           "recall_submission_<split>.json that eval writes for a split without "
                                           "ground truth (its recall_subset_ file beside it); needs --truth."),
    truth: Path | None = typer.Option(None, help="With --submission: a JSON list of {pairid, target} records "
                                      "(the demo's features/demo_data/truth/cirr_<split>_edits.json)."),
) -> None:
    """Evaluate a run, or embeddings / a similarity matrix from any model, with featvlr's protocols.

    \b
    Examples:
      featvlr eval runs/f30k_vse --split test --scenarios all
      featvlr eval runs/coco_vse runs/coco_hrem --split test     (ensemble: mean of the sims)
      featvlr eval --embeddings mine.npz --cache features/f30k.h5 --split test --json mine.json
      featvlr eval --sims sims.npy --relevance f30k-test-rougeL.npy --folds 1
    """
    from featvlr.app.evaluate import EvalFlags, run_eval, submission_guide

    if submission is not None or truth is not None:
        _score_submission(submission, truth, json_path)
        return
    flags = EvalFlags(folds=folds, ks=ks, ndcg_ks=ndcg_ks, ndcg_exp_k=ndcg_exp_k, batch_size=batch_size,
                      chunk_elements=chunk_elements, backend=backend, faiss_k=faiss_k,
                      t2t_without_siblings=t2t_without_siblings, composed_protocol=composed_protocol,
                      first_images=first_images)
    target = (targets[0] if len(targets) == 1 else list(targets)) if targets else None
    record = run_eval(target, embeddings=embeddings, sims=sims, cache=cache, relevance=relevance or None, split=split,
                      scenarios=scenarios, json_path=json_path, flags=flags, device=device, plots=plots,
                      print_table=False, examples=examples)
    from featvlr.evaluation.results import format_results

    typer.echo(format_results(record))
    typer.echo(f"results: {record['json']}")
    if record.get("examples"):
        typer.echo(f"examples: {record['examples']}")
    if record.get("submission") and not record.get("metrics"):
        for line in submission_guide(record["submission"], (record.get("input") or {}).get("split") or split,
                                     (record.get("input") or {}).get("cache") or cache):
            typer.echo(line)


def _score_submission(submission: Path | None, truth: Path | None, json_path: Path | None) -> None:
    """``featvlr eval --submission FILE --truth FILE``: the CIRR metrics of test-server files."""
    from featvlr.core.errors import FeatvlrError
    from featvlr.evaluation.composed import score_cirr_submission
    from featvlr.evaluation.results import format_table, write_results

    if submission is None or truth is None:
        raise FeatvlrError("--submission and --truth go together: the recall_submission_<split>.json file and "
                           "the truth file it is scored against")
    metrics = score_cirr_submission(submission, truth)
    typer.echo(f"submission {submission} · truth {truth}")
    typer.echo(format_table(metrics))
    if json_path is not None:
        write_results(json_path, metrics, split=None, plots=False,
                      inputs={"kind": "cirr submission", "path": str(submission), "truth": str(truth)})
        typer.echo(f"results: {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``featvlr eval`` to the app."""
    app.command("eval")(eval_command)
