"""Float targets (``AllocatedRecipe(float_targets=True)``, ``edgeq.quant.gptq``): each layer is solved
for the float model's output on the quantized model's inputs. The target weight is the least-squares
solution (and the layer's own weight when both inputs agree), the accumulator pairs the inputs token
by token, and a tiny Llama quantized that way is closer to its float logits than without, keeps its
plan and budget, and exports and runs on onnxruntime and TVM cpu as PyTorch does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import edgeq
from edgeq.errors import QuantizationError
from edgeq.quant.allocate import AllocatedRecipe
from edgeq.quant.gptq import FloatTargetAccumulator, float_target_weight
from edgeq.quant.serialize import quantized_layers
from _float_floor_checks import assert_exports_and_matches_pytorch
from _tiny_models import tiny_llama

RECIPE = AllocatedRecipe(skip=("lm_head",), budget=3.0, grids=((2, 32), (4, 32)), lopro_grids=((2, 32), (3, 64), (4, 64)),
                         lopro_block_size=32, sensitivity="held-out", float_targets=True)


def _inputs(seed: int, n: int = 512, k: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 16, generator=g) @ torch.randn(16, k, generator=g) + 0.5 * torch.randn(n, k, generator=g))


def test_target_is_the_least_squares_weight_and_the_weight_itself_on_equal_inputs():
    layer = torch.nn.Linear(48, 24)
    w = layer.weight.detach()
    x_float = _inputs(1)
    x_quant = x_float + 0.2 * _inputs(2)  # what earlier quantized layers did to the inputs
    acc = FloatTargetAccumulator(layer)
    for a, b in zip(x_quant.split(200), x_float.split(200)):  # batches of unequal size, scaled as one
        acc.add(a, b)
    n = x_quant.shape[0]
    torch.testing.assert_close(acc.h, 2 / n * x_quant.T @ x_quant, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc.cross, 2 / n * x_float.T @ x_quant, rtol=1e-5, atol=1e-5)
    target = float_target_weight(w, acc.h, acc.cross, damp=0.0)
    expected = torch.linalg.lstsq(x_quant.double(), (x_float @ w.T).double()).solution.T.float()
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)
    assert (x_quant @ target.T - x_float @ w.T).norm() < 0.8 * (x_quant @ w.T - x_float @ w.T).norm()
    same = FloatTargetAccumulator(layer)
    same.add(x_float, x_float)
    torch.testing.assert_close(float_target_weight(w, same.h, same.cross), w, rtol=0, atol=1e-6)
    with pytest.raises(QuantizationError, match="do not pair"):
        same.add(x_float, x_float[:10])


def _calib() -> torch.Tensor:
    # 1024 tokens: with 256 the least-squares target overfits them (0.207 against 0.200 without, seed 2)
    return torch.randint(0, 256, (16, 64), generator=torch.Generator().manual_seed(2))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def float_target_models():
    model = tiny_llama(num_hidden_layers=3, architectures=["LlamaForCausalLM"])
    with_targets = edgeq.quantize(model, RECIPE, calib=[_calib()])
    without = edgeq.quantize(model, dataclasses.replace(RECIPE, float_targets=False), calib=[_calib()])
    return model, with_targets, without


def test_float_targets_bring_the_logits_closer_to_float_with_the_same_plan(float_target_models):
    model, with_targets, without = float_target_models
    assert with_targets.edgeq_recipe.plan == dataclasses.replace(without.edgeq_recipe, float_targets=True).plan
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(7))
    ref = _logits(model, ids)
    errors = [float((_logits(m, ids) - ref).norm() / ref.norm()) for m in (with_targets, without)]
    assert errors[0] < 0.95 * errors[1], errors
    layers = quantized_layers(with_targets)
    stored = 8 * sum(m.weight_bytes() for m in layers.values()) / sum(m.in_features * m.out_features for m in layers.values())
    assert stored <= 3.0 and len(layers) == 21
    recipe = edgeq.recipes.resolve_recipe(with_targets.edgeq_recipe.to_json())
    assert recipe == with_targets.edgeq_recipe and recipe.float_targets


def test_float_target_llama_exports_and_matches_pytorch(float_target_models, tmp_path):
    _, with_targets, _ = float_target_models
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5))
    assert_exports_and_matches_pytorch(with_targets, ids, tmp_path)
