"""``gls``: token-guided global and local retrieval (TGDT / GLS) on frozen features.

Liu et al., "Efficient Token-Guided Image-Text Retrieval with Consistent Multimodal
Contrastive Training", IEEE TIP 2023 (code: LCFractal/TGDT), built on TERAN (Messina et al.,
"Fine-grained Visual Textual Alignment for Cross-Modal Retrieval using Transformer
Encoders", ACM TOMM 2021).

Two stages, one command:

- **Stage 1** (TERAN, :class:`LocalEncoders`): frozen region features (with a zero "CLS"
  slot prepended as slot 0) and frozen word-token features ([CLS] first, [SEP] last) are
  projected to ``embed_dim`` and run through one transformer per modality. Every output
  token is L2-normalised; the image-caption score is the MrSw alignment (max over regions,
  sum over words, TERAN slicing, not length-normalised; see
  :mod:`featvlr.modules.alignment`), trained with the VSE++ max-violation hinge.
- **Stage 2** (TGDT, :class:`GlobalEncoders`): a new transformer per modality over the
  *detached* stage-1 token sequences; the output at position 0 is the global embedding.
  Trained with the consistent multimodal contrastive loss
  (:class:`~featvlr.losses.ConsistentMultimodalContrastiveLoss`: inter-modal hinge +
  intra-modal consistency, margin 0.3) plus the hinge on the MrSw x 10 alignment of the
  stage-2 tokens. Stage 1 gets no gradient and stays in eval mode.

``featvlr train`` with ``model.stage: 2`` and ``model.stage1: ""`` first trains stage 1 as
its own run in ``<run>/stage1`` (declared by :meth:`GLS.stages`), then stage 2 on top of it;
``model.stage1: <run folder or .pt>`` starts stage 2 from an existing stage-1 run;
``model.stage: 1`` trains stage 1 alone.

Evaluation (``pairwise = True``; the encoders return dicts of padded tokens, masks and
global vectors) in three modes, ``model.eval_mode``:

- ``G``: global dot product (GLS-G).
- ``L``: ``local_scale`` x MrSw on the stage-1 tokens for every pair (GLS-L), block by
  block with bounded memory.
- ``GL``: for every query the ``shortlist_i2t`` (50) captions / ``shortlist_t2i`` (100)
  images with the best global scores are re-scored with ``local + global`` and re-ranked
  (GLS-GL); anything outside the shortlist ranks below it. A ground truth outside the
  shortlist is a **miss** (it takes the last rank, so medr/meanr count it as such); the
  reference code counts it as rank 0 (an R@1 hit), which inflates its GL numbers.

The evaluator (:class:`featvlr.evaluation.evaluators.CrossModalEvaluator`) asks :meth:`GLS.shortlist_plan`
which of the three to run; ``L`` goes through :meth:`GLS.score` block by block, ``GL``
through :meth:`GLS.rerank_fn` (the shortlisted pairs, grouped by image).

Deviations from the reference code (frozen features, small heads):

- No BERT and no region transformer over raw features with box encodings: the frozen
  token features are projected (``Linear``, or ``Linear + MLP`` for regions) straight into
  the token transformers; the cache has no boxes.
- Stage 1 is trained first, then frozen (the released TGDT code detaches it and loads a
  trained TERAN; trained from scratch it would stay at random init).
- Stage-2 transformers take a key-padding mask (``stage2_padding_mask``; the reference
  code has none, so padding leaks into its attention). Stage 1 runs in eval mode (no
  dropout) while stage 2 trains.
- ``global_token: mean`` (an option; default ``first`` as TGDT) takes the mean of the
  stage-2 outputs as the global embedding: on frozen features the position-0 output starts
  nearly constant across inputs and the hardest-negative hinge can leave it collapsed.
- The hinges use the id mask by default (``loss.id_mask``; the reference masks only the
  diagonal, so another caption of the same image in the batch is a negative).
- Alignment masking uses only valid tokens (see :mod:`featvlr.modules.alignment`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featvlr.core import distributed as dist_utils
from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.errors import ConfigError, InputError
from featvlr.core.schema import choice, number
from featvlr.losses import ConsistentMultimodalContrastiveLoss, HingeLoss
from featvlr.methods.base import FeatureDims, LoadRun, Method, Stage, StepState
from featvlr.methods.options import HingeOptions
from featvlr.methods.registry import register_method
from featvlr.modules import RegionProjection, TokenAlignment, masked_mean, xavier_linear
from featvlr.modules.alignment import (
    ALIGNMENT_MODES,
    alignment_scores,
    pair_alignment_scores,
    slice_regions,
    slice_words,
)
from featvlr.modules.precision import fp32_scores, full_precision

EVAL_MODES = ("G", "L", "GL")
# Options that fix the shape of stage 1; a stage-1 run must agree with them.
STAGE1_ARCH = ("embed_dim", "layers", "heads", "ff_dim", "image_head", "image_slot0")


@dataclass
class GLSModelOptions:
    # 1: train the TERAN stage alone; 2: train the global stage on a frozen stage 1.
    stage: int = number(2, min=1, max=2)
    # Stage 2: run folder or checkpoint of a trained stage 1; "" trains one first into <run>/stage1.
    stage1: str = ""
    # Epochs of the stage-1 run that stage 2 trains first (0: train.epochs).
    stage1_epochs: int = number(0, min=0)
    embed_dim: int = number(1024, min=1)
    layers: int = number(2, min=1)
    heads: int = number(4, min=1)
    ff_dim: int = number(2048, min=1)
    dropout: float = number(0.1, min=0, below=1)
    # Region projection: "linear" (TERAN's img_proj) or "mlp" (Linear + MLP, VSE-infinity).
    image_head: str = choice("linear", "linear", "mlp")
    # Image slot 0: "zero" (TERAN's zero region) or "mean" (the mean of the regions).
    image_slot0: str = choice("zero", "zero", "mean")
    # Key-padding mask in the stage-2 transformers (the reference code has none).
    stage2_padding_mask: bool = True
    # Global embedding: stage-2 output at position 0 ("first", TGDT) or the mean of its outputs.
    global_token: str = choice("first", "first", "mean")
    alignment_mode: str = choice("MrSw", *ALIGNMENT_MODES)
    # TERAN drops the last wordpiece before [SEP] (usually the final period); off keeps it.
    drop_last_wordpiece: bool = True
    # Evaluation: "G" (global), "L" (local for every pair) or "GL" (global shortlist, local re-rank).
    eval_mode: str = choice("GL", *EVAL_MODES)
    shortlist_i2t: int = number(50, min=1)
    shortlist_t2i: int = number(100, min=1)
    # Test-time score: local_scale * alignment (+ global_weight * global in GL). TGDT: 10 and 1.
    local_scale: float = number(10.0, min=0)
    global_weight: float = number(1.0, min=0)
    # Largest alignment tensor [images, regions, texts, words] built at once.
    max_alignment_elements: int = number(1 << 26, min=1)


@dataclass
class GLSLossOptions(HingeOptions):
    # Epochs summing over negatives before the hardest negative (0: hardest from the start, as TERAN/TGDT).
    warmup_epochs: int = number(0, min=0)
    # Stage 1: hinge on stage1_scale * alignment (TERAN: 1).
    stage1_scale: float = number(1.0, above=0)
    # Stage 2: CMC on the globals + alignment_weight * hinge on stage2_scale * alignment (TGDT: 1, 10).
    intra_margin: float = number(0.3, min=0)
    intra_weight: float = number(1.0, min=0)
    alignment_weight: float = number(1.0, min=0)
    stage2_scale: float = number(10.0, above=0)


def token_transformer(opts: GLSModelOptions) -> nn.TransformerEncoder:
    """``layers`` post-norm transformer layers, ``heads`` heads, ReLU FFN (TERAN/TGDT shape)."""
    layer = nn.TransformerEncoderLayer(opts.embed_dim, opts.heads, opts.ff_dim, opts.dropout,
                                       activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, opts.layers, enable_nested_tensor=False)


class LocalEncoders(nn.Module):
    """Stage 1 (TERAN): token transformers over projected frozen regions and word tokens.

    Input: regions ``[B, R, D]`` + mask, or word tokens ``[B, L, Dt]`` + mask. Output:
    un-normalised token features ``[B, R + 1, d]`` (slot 0 = the zero/CLS slot) or
    ``[B, L, d]``, and their masks.
    """

    def __init__(self, opts: GLSModelOptions, dims: FeatureDims):
        super().__init__()
        if opts.embed_dim % opts.heads:
            raise ConfigError(f"model.embed_dim={opts.embed_dim} is not divisible by model.heads={opts.heads}")
        self.opts = opts
        self.image_proj = (xavier_linear(dims.region_dim, opts.embed_dim) if opts.image_head == "linear"
                           else RegionProjection(dims.region_dim, opts.embed_dim))
        self.text_proj = xavier_linear(dims.text_dim, opts.embed_dim)
        self.image_encoder = token_transformer(opts)
        self.text_encoder = token_transformer(opts)

    def images(self, regions: torch.Tensor, region_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = regions.shape[0]
        slot0 = (masked_mean(regions, region_mask).unsqueeze(1) if self.opts.image_slot0 == "mean"
                 else regions.new_zeros(b, 1, regions.shape[2]))
        x = torch.cat([slot0, regions], 1)
        mask = torch.cat([region_mask.new_ones(b, 1), region_mask], 1)
        h = self.image_proj(x) if self.opts.image_head == "linear" else self.image_proj(x, mask)
        return self.image_encoder(h, src_key_padding_mask=~mask), mask

    def texts(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder(self.text_proj(tokens), src_key_padding_mask=~token_mask), token_mask


class GlobalEncoders(nn.Module):
    """Stage 2 (TGDT): a transformer per modality over stage-1 token sequences.

    Input: stage-1 tokens ``[B, S, d]`` and mask. Output: the L2-normalised global
    embedding ``[B, d]`` (the output at position 0, or the mean of the valid outputs with
    ``global_token="mean"``) and the L2-normalised output tokens ``[B, S, d]``.
    """

    def __init__(self, opts: GLSModelOptions):
        super().__init__()
        self.padding_mask = opts.stage2_padding_mask
        self.global_token = opts.global_token
        self.image_encoder = token_transformer(opts)
        self.text_encoder = token_transformer(opts)

    def _run(self, encoder: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = encoder(x, src_key_padding_mask=~mask if self.padding_mask else None)
        g = out[:, 0] if self.global_token == "first" else masked_mean(out, mask)
        return F.normalize(g, dim=-1), F.normalize(out, dim=-1)

    def images(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(self.image_encoder, tokens, mask)

    def texts(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(self.text_encoder, tokens, mask)


def _gather_tokens(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather padded token sequences (padded to the longest over ranks) with their masks."""
    if not dist_utils.is_distributed() or dist_utils.world_size() == 1:
        return x, mask
    import torch.distributed as dist

    length = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    pad = int(length.item()) - x.shape[1]
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    return gather_with_grad(x), gather_no_grad(mask)


@register_method("gls")
class GLS(Method):
    """TGDT / GLS: TERAN token stage + global stage, evaluated G, L or GL (module docstring)."""

    pairwise = True
    ModelOptions = GLSModelOptions
    LossOptions = GLSLossOptions
    batch_keys = ("regions", "region_mask", "tokens", "token_mask", "image_ids")

    def __init__(self, model: GLSModelOptions, loss: GLSLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        if model.stage == 1 and model.eval_mode != "L":
            raise ConfigError("model.stage=1 has no global embedding: use model.eval_mode=L")
        self.stage1 = LocalEncoders(model, dims)
        self.stage2 = GlobalEncoders(model) if model.stage == 2 else None
        self.alignment = TokenAlignment(mode=model.alignment_mode, drop_last_wordpiece=model.drop_last_wordpiece,
                                        max_elements=model.max_alignment_elements)
        self.hinge = HingeLoss(margin=loss.margin)
        self.cmc = ConsistentMultimodalContrastiveLoss(margin=loss.margin, intra_margin=loss.intra_margin)
        # Whether stage 1 holds trained weights (saved with the checkpoint).
        self.register_buffer("stage1_ready", torch.tensor(model.stage == 1))
        if model.stage == 2:
            self.stage1.requires_grad_(False)

    # -- stage 1 --------------------------------------------------------------------------
    def attach_runs(self, load_run: LoadRun) -> None:
        """Stage 2 starts from the stage-1 run of ``model.stage1`` (:meth:`load_stage1`)."""
        stage1 = self.model_opts.stage1
        if self.model_opts.stage == 2 and stage1 and Path(stage1).exists():
            self.load_stage1(stage1, load_run)

    def load_stage1(self, path: str | Path, load_run: LoadRun) -> None:
        """Copy the stage-1 weights of a trained run (folder or checkpoint) into this model."""
        other, cfg = load_run(path, "cpu")
        if not isinstance(other, GLS):
            raise InputError(path, f"model.stage1 must be a gls run, got method {cfg.method!r}")
        diff = [k for k in STAGE1_ARCH if getattr(cfg.model, k) != getattr(self.model_opts, k)]
        if diff:
            raise ConfigError("model.stage1: the stage-1 run differs in "
                              + ", ".join(f"{k} ({getattr(cfg.model, k)} vs {getattr(self.model_opts, k)})"
                                          for k in diff))
        self.stage1.load_state_dict(other.stage1.state_dict())
        self.stage1_ready.fill_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage2 is not None:
            self.stage1.eval()  # frozen: no dropout in its forward while stage 2 trains
        return self

    @classmethod
    def stages(cls, config: Any, run_dir: Any) -> list[Stage]:
        """Stage 2 without ``model.stage1`` first trains stage 1 into ``<run_dir>/stage1``."""
        opts: GLSModelOptions = config.model
        if opts.stage != 2 or opts.stage1:
            return []
        return [Stage("stage1", stage1_config(config), Path(run_dir) / "stage1")]

    @classmethod
    def prepare(cls, config: Any, run_dir: Any, load_run: LoadRun | None = None) -> Any:
        """Point ``model.stage1`` at the stage-1 run of :meth:`stages`."""
        opts: GLSModelOptions = config.model
        if opts.stage != 2 or opts.stage1:
            return config
        out = copy.deepcopy(config)
        out.model = dataclasses.replace(opts, stage1=str(Path(run_dir) / "stage1"))
        return out

    # -- training -------------------------------------------------------------------------
    def _hinge(self, scores: torch.Tensor, ids: torch.Tensor, hardest: bool) -> torch.Tensor:
        return self.hinge(scores, max_violation=hardest, image_ids=ids if self.loss_opts.id_mask else None)

    def training_step(self, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, torch.Tensor]:
        lo = self.loss_opts
        ids = gather_no_grad(batch["image_ids"])
        hardest = lo.max_violation and state.epoch >= lo.warmup_epochs
        if self.stage2 is None:
            v, vm = self.stage1.images(batch["regions"], batch["region_mask"])
            t, tm = self.stage1.texts(batch["tokens"], batch["token_mask"])
            v, vm = _gather_tokens(F.normalize(v, dim=-1), vm)
            t, tm = _gather_tokens(F.normalize(t, dim=-1), tm)
            return {"alignment_loss": self._hinge(lo.stage1_scale * self.alignment(v, vm, t, tm), ids, hardest)}
        if not bool(self.stage1_ready):
            stage1 = self.model_opts.stage1
            where = (f" ({stage1!r} does not exist)" if stage1 and not Path(stage1).exists()
                     else f" ({stage1!r} was not attached: attach_runs)" if stage1 else "")
            raise ConfigError(f"gls stage 2 needs a trained stage 1{where}: set model.stage1 to a stage-1 run "
                              "or leave it empty so that `featvlr train` trains one first")
        with torch.no_grad():  # stage 1 is frozen: its tokens are detached inputs
            v1, vm = self.stage1.images(batch["regions"], batch["region_mask"])
            t1, tm = self.stage1.texts(batch["tokens"], batch["token_mask"])
        gv, v2 = self.stage2.images(v1, vm)
        gt, t2 = self.stage2.texts(t1, tm)
        gv, gt = gather_with_grad(gv), gather_with_grad(gt)
        v2, vm = _gather_tokens(v2, vm)
        t2, tm = _gather_tokens(t2, tm)
        inter, intra = self.cmc.terms(gv, gt, max_violation=hardest, image_ids=ids if lo.id_mask else None)
        align = self._hinge(lo.stage2_scale * self.alignment(v2, vm, t2, tm), ids, hardest)
        return {"matching_loss": inter + lo.intra_weight * intra, "alignment_loss": lo.alignment_weight * align,
                "inter": inter.detach(), "intra": intra.detach()}

    # -- evaluation -----------------------------------------------------------------------
    def _encode(self, tokens: torch.Tensor, mask: torch.Tensor, side: str) -> dict[str, torch.Tensor]:
        mode = self.model_opts.eval_mode
        out: dict[str, torch.Tensor] = {}
        if mode in ("L", "GL"):  # the tokens the local score uses (TERAN slicing done once here)
            tokens_n = F.normalize(tokens, dim=-1)
            local, local_mask = (slice_regions(tokens_n, mask) if side == "images" else
                                 slice_words(tokens_n, mask, drop_last_wordpiece=self.model_opts.drop_last_wordpiece))
            out["tokens"], out["mask"] = local.contiguous(), local_mask
        if mode in ("G", "GL"):
            encoder = self.stage2.images if side == "images" else self.stage2.texts
            out["global"] = encoder(tokens, mask)[0]
        return out

    def encode_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"tokens": [B, R, d], "mask": [B, R], "global": [B, d]}`` (what the mode needs):
        the stage-1 region tokens without slot 0, and the stage-2 global embedding."""
        return self._encode(*self.stage1.images(batch["regions"], batch["region_mask"]), "images")

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"tokens": [B, L - 3, d], "mask": [B, L - 3], "global": [B, d]}`` (what the mode
        needs): the stage-1 word tokens without [CLS], the last wordpiece and [SEP]
        (``L - 2`` with ``model.drop_last_wordpiece: false``)."""
        return self._encode(*self.stage1.texts(batch["tokens"], batch["token_mask"]), "texts")

    def global_scores(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        return fp32_scores(images["global"], texts["global"])

    def local_scores(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        """``local_scale`` x alignment of every pair of encoded (already sliced) tokens."""
        opts = self.model_opts
        return opts.local_scale * alignment_scores(images["tokens"], images["mask"], texts["tokens"], texts["mask"],
                                                   mode=opts.alignment_mode, max_elements=opts.max_alignment_elements)

    def score(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[n_img, n_txt]`` scores of the mode: G global, L local, GL the re-rank score
        ``local + global_weight * global`` (the shortlist itself is the evaluator's)."""
        mode = self.model_opts.eval_mode
        if mode == "G":
            return self.global_scores(images, texts)
        local = self.local_scores(images, texts)
        if mode == "L":
            return local
        return local + self.model_opts.global_weight * self.global_scores(images, texts)

    def rerank_fn(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]):
        """Re-rank function over encoded splits for the evaluator's shortlist mode:
        ``rerank(query_rows [q], candidate_rows [q, k], queries) -> [q, k]`` scores of the
        mode, where ``queries`` is ``"images"`` (i2t: candidates are text rows) or
        ``"texts"`` (t2i: candidates are image rows).

        The local part scores the ``q * k`` pairs grouped by image
        (:func:`~featvlr.modules.alignment.pair_alignment_scores`), with temporaries of at
        most ``min(model.max_alignment_elements, 2**20)`` entries.
        """
        opts = self.model_opts
        budget = min(opts.max_alignment_elements, 1 << 20)

        @torch.no_grad()
        def rerank(q: torch.Tensor, cand: torch.Tensor, queries: str = "images") -> torch.Tensor:
            if queries not in ("images", "texts"):
                raise ValueError(f"queries must be 'images' or 'texts', got {queries!r}")
            device = next(iter(images.values())).device
            q_rows = q.to(device)[:, None].expand(cand.shape)
            cand = cand.to(device)
            img_rows, txt_rows = (q_rows, cand) if queries == "images" else (cand, q_rows)
            score = torch.zeros(cand.shape, dtype=torch.float32, device=device)
            if opts.eval_mode in ("G", "GL"):
                gi, gt = full_precision(images["global"][img_rows], texts["global"][txt_rows])
                g = (gi * gt).sum(-1).float()
                score += opts.global_weight * g if opts.eval_mode == "GL" else g
            if opts.eval_mode in ("L", "GL"):
                local = pair_alignment_scores(images["tokens"], images["mask"], texts["tokens"], texts["mask"],
                                              img_rows.reshape(-1), txt_rows.reshape(-1), mode=opts.alignment_mode,
                                              max_elements=budget)
                score += opts.local_scale * local.view(cand.shape)
            return score

        return rerank

    def shortlist_plan(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        """How the evaluator should rank (the hook :class:`featvlr.evaluation.evaluators.CrossModalEvaluator` asks).

        - ``L``: None (every pair through :meth:`score`, block by block).
        - ``G``: ``{"images": g_v, "texts": g_t}``: global embeddings, dot product.
        - ``GL``: the same plus ``"shortlist": (shortlist_i2t, shortlist_t2i)`` and
          ``"rerank_fn"`` (:meth:`rerank_fn`): each query's shortlist by global score is
          re-scored with ``local + global``; a ground truth outside it is a miss.
        """
        mode = self.model_opts.eval_mode
        if mode == "L":
            return None
        plan: dict[str, Any] = {"images": images["global"], "texts": texts["global"]}
        if mode == "GL":
            plan["shortlist"] = (self.model_opts.shortlist_i2t, self.model_opts.shortlist_t2i)
            plan["rerank_fn"] = self.rerank_fn(images, texts)
        return plan


def stage1_config(config: Any) -> Any:
    """The config of the stage-1 run behind a stage-2 config: ``stage=1``, L evaluation,
    ``stage1_epochs`` epochs (and the same data, optimiser and seed)."""
    opts: GLSModelOptions = config.model
    cfg = copy.deepcopy(config)
    cfg.model = dataclasses.replace(opts, stage=1, stage1="", eval_mode="L")
    cfg.name = f"{config.name}_stage1" if config.name else "stage1"
    if opts.stage1_epochs:
        cfg.train.epochs = opts.stage1_epochs
    # Cross-modal scenarios only: the token-level stage-1 score has no uni-modal form.
    cfg.eval.scenarios = [s for s in cfg.eval.scenarios if s in ("i2t", "t2i")] or ["i2t", "t2i"]
    return cfg
