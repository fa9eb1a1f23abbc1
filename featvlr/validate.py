"""The trainer's view of evaluation: which protocol a config asks for, and where results go.

:func:`evaluate_split` is what the trainer calls on the dev split every epoch (cheap
scenarios only) and :func:`write_eval` what it calls on the test split at the end (every
scenario, a results JSON and plots). Both go through :func:`featvlr.scenarios.evaluate_method`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featvlr.config import Config


def protocol_folds(cfg: Config, *, final: bool) -> int | tuple[int, ...]:
    """COCO reports 5K and the 5-fold 1K average on the test split; every other dataset one fold
    (the same rule as ``featvlr eval``: :func:`featvlr.evaluate.default_folds`)."""
    from featvlr.evaluate import default_folds

    return default_folds(cfg) if final else 1


def evaluate_split(method, split, cfg: Config, scenarios: list[str] | None, device, *, final: bool = False,
                   curves: dict | None = None, submission_dir: Path | None = None) -> dict[str, float]:
    """Flat metrics (``"i2t/R@1"``, ..., ``"rsum"``) of ``method`` on ``split``."""
    from featvlr.scenarios import evaluate_method

    kwargs: dict[str, Any] = dict(batch_size=cfg.eval.batch_size, device=device,
                                  chunk_elements=cfg.eval.chunk_elements, curves=curves)
    if getattr(method, "task", "cross_modal") == "composed":
        # the dataset's protocol; FashionIQ's "val" is its per-category splits val_<category>
        from featvlr.data_composed import evaluate_composed_method

        return evaluate_composed_method(method, split.name, store=split.store, dataset=cfg.data.dataset,
                                        submission_dir=submission_dir, **kwargs)
    return evaluate_method(method, split, scenarios, protocol_folds(cfg, final=final),
                           ndcg_ks=tuple(cfg.eval.ndcg_ks), ndcg_exp_k=cfg.eval.ndcg_exp_k,
                           max_tokens=cfg.data.max_tokens,
                           teran_ndcg=final, **kwargs)


def write_eval(method, task, split, cfg: Config, device, path: str | Path, *,
               checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Evaluate every configured scenario on ``split``; write the results JSON and plots at ``path``."""
    from featvlr.evaluate import write_results

    import time

    curves: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        metrics = task.evaluate(method, split, cfg, list(cfg.eval.scenarios), device, final=True, curves=curves,
                                submission_dir=Path(path).parent / "submission")
    record = write_results(path, metrics, split=split.name, cfg=cfg, curves=curves, device=str(device),
                           seconds=time.perf_counter() - t0, checkpoint=checkpoint)
    task.after_final_eval(method, split, cfg, device, Path(path).parent)
    return record


def save_query_ranks(method, split, cfg: Config, device, path: Path) -> Path:
    """Per-query 0-based i2t and t2i ranks (whole split), for paired significance tests."""
    import numpy as np

    from featvlr.retrieval import EmbeddingScores, embed_split, group_positives, ranks

    with torch.no_grad():
        images, texts = embed_split(method, split, batch_size=cfg.eval.batch_size, device=device,
                                    max_tokens=cfg.data.max_tokens)
        txt2img = torch.as_tensor(split.image_index(), device=images.device)
        i2t = ranks(EmbeddingScores(images, texts), group_positives(txt2img, split.n_images),
                    chunk_elements=cfg.eval.chunk_elements)
        t2i = ranks(EmbeddingScores(texts, images), txt2img, chunk_elements=cfg.eval.chunk_elements)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, i2t=i2t.cpu().numpy(), t2i=t2i.cpu().numpy())
    tmp.replace(path)
    return path
