"""Uni-modal and mixed NDCG scenarios (i2i, t2t, i2it, t2it) from embeddings and the ROUGE-L
relevance; the query is removed from its own gallery (:mod:`featvlr.evaluation.scenarios`)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from featvlr.core.errors import FeatvlrError
from featvlr.evaluation.split_data import SplitData, first_captions
from featvlr.retrieval import EmbeddingScores, group_positives, ndcg_multi
from featvlr.retrieval.metrics import ndcg_key


def uni_and_mixed(img: torch.Tensor, txt: torch.Tensor, data: SplitData, scenarios: list[str], *,
                   ndcg_ks, ndcg_exp_k, t2t_without_siblings, chunk_elements) -> dict[str, float]:
    R = data.relevance(scenarios[0])  # [n_texts, n_images], caption x image
    dev = img.device
    first = first_captions(data.txt2img, data.n_images)
    q_img = torch.as_tensor(np.nonzero(first >= 0)[0])  # images with a caption can be queries
    q_cap = torch.as_tensor(first[q_img.numpy()])
    if len(q_img) == 0:
        raise FeatvlrError("no image has a caption: the uni-modal scenarios have no queries")
    specs = [(k, "linear") for k in ndcg_ks] + [(ndcg_exp_k, "exp")]

    def rel_img_img(a: int, b: int) -> torch.Tensor:  # R[first(a), :]
        return R[q_cap[a:b]]

    def rel_img_cap(a: int, b: int) -> torch.Tensor:  # R[:, a].T
        return R[:, q_img[a:b]].t()

    plans: list[tuple[str, torch.Tensor, torch.Tensor, Callable[[int, int], torch.Tensor], torch.Tensor]] = []
    for name in scenarios:
        if name == "i2i":
            plans.append((name, img[q_img.to(dev)], img, rel_img_img, q_img))
        elif name == "t2t":
            plans.append((name, txt[q_cap.to(dev)], txt, rel_img_cap, q_cap))
            if t2t_without_siblings:
                siblings = group_positives(data.txt2img, data.n_images)[q_img]
                plans.append(("t2t_nosiblings", txt[q_cap.to(dev)], txt, rel_img_cap, siblings))
        elif name == "i2it":
            plans.append((name, img[q_img.to(dev)], torch.cat([img, txt]),
                          lambda a, b: torch.cat([rel_img_img(a, b), rel_img_cap(a, b)], dim=1), q_img))
        elif name == "t2it":
            plans.append((name, txt[q_cap.to(dev)], torch.cat([txt, img]),
                          lambda a, b: torch.cat([rel_img_cap(a, b), rel_img_img(a, b)], dim=1), q_cap))
    out: dict[str, float] = {}
    for name, queries, gallery, rel_fn, exclude in plans:
        src = EmbeddingScores(queries, gallery)
        vals = ndcg_multi(src, lambda a, b, _f=rel_fn: _f(a, b).to(dev), specs, exclude=exclude.to(dev),
                          chunk_elements=chunk_elements)
        for (k, gain), v in vals.items():
            out[f"{name}/{ndcg_key(gain, k)}"] = float(v.mean())
    return out
