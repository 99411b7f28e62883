"""Bad input to the weight-only quantizers: one clear EdgeqError naming what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeq
from edgeq.errors import QuantizationError, RecipeError
from edgeq.quant.weight_only_recipes import GPTQRecipe, RTNRecipe


def test_group_size_not_dividing_names_the_layer():
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(24, 4))
    with pytest.raises(QuantizationError, match=r"^2: group size 16 does not divide its 24 input features"):
        edgeq.quantize(model, RTNRecipe(bits=4, group_size=16))


def test_gptq_without_calibration_data():
    model = nn.Sequential(nn.Linear(64, 8))
    with pytest.raises(QuantizationError, match="'gptq' needs calibration data"):
        edgeq.quantize(model, GPTQRecipe(bits=4, group_size=32))


def test_model_with_no_quantizable_layers():
    with pytest.raises(QuantizationError, match="ReLU has no quantizable layers"):
        edgeq.quantize(nn.ReLU(), "w4g128-rtn")
    with pytest.raises(QuantizationError, match="Sequential has no quantizable layers"):
        edgeq.quantize(nn.Sequential(nn.Linear(64, 8)), RTNRecipe(skip=("*",)))


def test_unknown_preset_names_it():
    with pytest.raises(RecipeError, match="unknown recipe preset 'w5g128-rtn'"):
        edgeq.quantize(nn.Linear(64, 8), "w5g128-rtn")


def test_unsupported_bits_names_the_layer():
    with pytest.raises(QuantizationError, match="^fc: 5-bit weights are not supported"):
        edgeq.quantize(nn.ModuleDict({"fc": nn.Linear(64, 8)}), RTNRecipe(bits=5, group_size=32))


def test_gptq_runs_on_a_plain_module_and_beats_rtn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16))
    x = torch.randn(512, 8) @ torch.randn(8, 128)  # low-rank, correlated inputs
    ref = model(x)
    err = lambda m: ((m(x) - ref).norm() / ref.norm()).item()  # noqa: E731
    gptq = edgeq.quantize(model, GPTQRecipe(bits=3, group_size=32), calib=x)
    rtn = edgeq.quantize(model, RTNRecipe(bits=3, group_size=32))
    assert err(gptq) < 0.7 * err(rtn)
