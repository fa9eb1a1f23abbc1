"""Weight decay on every parameter (train.decay_all_parameters) and HREM's image-projection init."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from featvlr.config import load_config
from featvlr.methods.base import FeatureDims
from featvlr.methods.hrem import HREM, HREMLossOptions, HREMModelOptions
from featvlr.methods.vse import VSE, VSELossOptions, VSEModelOptions

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIMS = FeatureDims(region_dim=12, n_regions=7, text_dim=10)


def _vse() -> VSE:
    torch.manual_seed(0)
    return VSE(VSEModelOptions(embed_dim=16), VSELossOptions(), DIMS)


def test_default_groups_are_param_groups():
    m = _vse()
    a, b = m.optimizer_groups(1e-3, 0.1), m.param_groups(1e-3, 0.1)
    assert [(g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in a] == \
           [(g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in b]
    assert any(g["weight_decay"] == 0.0 for g in a)  # biases and norms undecayed by default


def test_decay_all_decays_every_parameter():
    m = _vse()
    groups = m.optimizer_groups(1e-3, 0.1, decay_all=True)
    assert all(g["weight_decay"] == 0.1 and g["lr"] == 1e-3 for g in groups)
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in m.parameters() if p.requires_grad}
    # AdamW then shrinks a bias with zero gradient
    opt = torch.optim.AdamW(groups, lr=1e-3)
    bias = m.encoders.image_proj.mlp_in.bias
    with torch.no_grad():
        bias.fill_(1.0)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(bias, torch.full_like(bias, 1.0 - 1e-3 * 0.1))


@pytest.mark.parametrize("name,expected", [("f30k_vse", True), ("coco_vse", True), ("f30k_covlr", True),
                                           ("coco_covlr", True), ("demo_vse", False), ("f30k_gls", False)])
def test_configs_citing_vse_infty_decay_all(name, expected):
    assert load_config(CONFIGS / f"{name}.yaml").train.decay_all_parameters is expected


def test_hrem_image_projection_is_xavier_with_zero_bias():
    torch.manual_seed(0)
    m = HREM(HREMModelOptions(embed_dim=16, fragment_heads=4, graph_heads=4), HREMLossOptions(), DIMS)
    linears = [mod for mod in m.encoders.image_proj.modules() if isinstance(mod, nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound + 1e-6
        assert layer.weight.abs().max() > 0.8 * bound  # uniform over the whole Xavier range
        assert torch.count_nonzero(layer.bias) == 0
    # vse keeps PyTorch's default init on the MLP (non-zero biases)
    assert torch.count_nonzero(_vse().encoders.image_proj.mlp_in.bias) > 0


def test_hrem_image_init_default_is_vse_init():
    """``model.image_init: default`` keeps vse's init: Xavier fc, PyTorch's default on the MLP."""
    torch.manual_seed(0)
    m = HREM(HREMModelOptions(embed_dim=16, fragment_heads=4, graph_heads=4, image_init="default"),
             HREMLossOptions(), DIMS)
    proj = m.encoders.image_proj
    assert torch.count_nonzero(proj.fc.bias) == 0
    assert torch.count_nonzero(proj.mlp_in.bias) > 0
    fan_in = proj.mlp_in.weight.shape[1]
    assert proj.mlp_in.weight.abs().max() <= 1.0 / math.sqrt(fan_in) + 1e-6  # kaiming_uniform(a=sqrt(5)) bound
