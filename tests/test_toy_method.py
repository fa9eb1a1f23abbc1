"""Adding a method is one file: a seventh method defined here alone, trained and evaluated.

``toy_mean`` is the example of ``docs/adding_a_method.md``: mean-pooled regions and the
pooled caption vector, each through one ``Linear`` into a shared space, trained with the
soft-id InfoNCE loss. Nothing in the package lists it: registering it is importing this
module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featvlr.inference.loading import load_method
from featvlr.config import load_config
from featvlr.core.distributed import gather_no_grad, gather_with_grad
from featvlr.core.errors import ConfigError
from featvlr.losses import SoftIdInfoNCE
from featvlr.methods import Method, StepState, get_method, list_methods, register_method
from featvlr.methods.base import FeatureDims
from featvlr.modules import masked_mean
from featvlr.training.trainer import train

from synthetic import write_synthetic_cache


@dataclass
class ToyModelOptions:
    # Size of the shared embedding space.
    embed_dim: int = 32


@dataclass
class ToyLossOptions:
    temperature: float = 0.07
    learnable_temperature: bool = True


@register_method("toy_mean")
class ToyMean(Method):
    """Mean of the valid regions and the pooled caption vector, one ``Linear`` each, L2-normalised.

    Input: cross-modal batches (``regions``, ``region_mask``, ``pooled_text``, ``image_ids``).
    ``training_step`` returns ``contrastive_loss`` (soft-id InfoNCE over the global batch)
    and logs ``temperature``; ``encode_images`` / ``encode_texts`` give ``[B, embed_dim]``.
    """

    ModelOptions = ToyModelOptions
    LossOptions = ToyLossOptions

    def __init__(self, model: ToyModelOptions, loss: ToyLossOptions, dims: FeatureDims):
        super().__init__(model, loss, dims)
        if model.embed_dim < 1:
            raise ConfigError(f"model.embed_dim must be >= 1, got {model.embed_dim}")
        self.image_proj = nn.Linear(dims.region_dim, model.embed_dim)
        self.text_proj = nn.Linear(dims.text_dim, model.embed_dim)
        self.criterion = SoftIdInfoNCE(temperature=loss.temperature, learnable=loss.learnable_temperature)

    def encode_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = masked_mean(batch["regions"].float(), batch["region_mask"])
        return F.normalize(self.image_proj(pooled), dim=-1)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.text_proj(batch["pooled_text"].float()), dim=-1)

    def training_step(self, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, torch.Tensor]:
        v = gather_with_grad(self.encode_images(batch))
        t = gather_with_grad(self.encode_texts(batch))
        ids = gather_no_grad(batch["image_ids"])
        return {"contrastive_loss": self.criterion(v, t, ids), "temperature": self.criterion.tau.detach()}


def toy_config(cache, **train):
    return load_config(base={
        "method": "toy_mean",
        "data": {"cache": str(cache), "dataset": "synthetic"},
        "model": {"embed_dim": 16},
        "train": {"epochs": 1, "batch_size": 32, "lr": 1e-2, "progress": False, "device": "cpu", **train},
        "eval": {"scenarios": ["i2t", "t2i"], "dev_scenarios": ["i2t", "t2i"]},
    })


def test_the_toy_method_is_registered_by_importing_this_file():
    assert "toy_mean" in list_methods() and get_method("toy_mean") is ToyMean
    assert {"vse", "hrem", "covlr", "rvlr", "gls", "mlcl", "combiner"} <= set(list_methods())
    cfg = toy_config("unused.h5")
    assert cfg.model == ToyModelOptions(embed_dim=16) and cfg.loss == ToyLossOptions()


def test_toy_options_are_validated_like_every_method():
    with pytest.raises(ConfigError, match="did you mean 'embed_dim'"):
        load_config(base={"method": "toy_mean", "model": {"embed_dims": 8}})


def test_the_toy_method_trains_and_evaluates(tmp_path):
    cache = write_synthetic_cache(tmp_path / "syn.h5")
    result = train(toy_config(cache), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "ckpt" / "best.pt").is_file() and (run / "ckpt" / "last.pt").is_file()
    assert (run / "config.yaml").is_file() and result.epochs_run == 1
    metrics = json.loads((run / "eval" / "test.json").read_text())["metrics"]
    for key in ("i2t/R@1", "i2t/R@5", "i2t/R@10", "t2i/R@1", "t2i/R@10", "rsum"):
        assert 0.0 <= metrics[key] <= (600.0 if key == "rsum" else 100.0), key
    assert result.test_metrics and result.best_epoch == 1
    # 16 test images: chance is R@10 = 62.5 for t2i; the cache is learnable.
    assert metrics["t2i/R@10"] > 62.5
    method, cfg = load_method(run)
    assert isinstance(method, ToyMean) and cfg.method == "toy_mean" and not method.training
