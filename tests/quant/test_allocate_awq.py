"""The bit allocator with AWQ scales folded in first (``AllocatedRecipe(awq=True)``): the fold is
the one ``apply_awq`` makes, exact in float; the plan is made and solved on the scaled model,
meets the budget counting every stored byte, repeats from the saved recipe, and the model exports
and runs on onnxruntime and TVM cpu as PyTorch does."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import edgeq
from edgeq.quant.allocate import AllocatedRecipe
from edgeq.quant.awq import apply_awq
from edgeq.quant.lopro import LoProLinear
from edgeq.quant.serialize import quantized_layers
from _float_floor_checks import assert_exports_and_matches_pytorch
from _tiny_models import tiny_llama

RECIPE = AllocatedRecipe(skip=("lm_head",), budget=3.0, grids=((2, 32), (4, 32)), lopro_grids=((2, 32), (3, 64), (4, 64)),
                         lopro_block_size=32, sensitivity="held-out", awq=True, awq_group_size=32)


def _calib() -> torch.Tensor:
    return torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(seed))


def _logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def awq_allocated():
    model = tiny_llama(num_key_value_heads=4, architectures=["LlamaForCausalLM"])  # no GQA: o_proj folds too
    return model, edgeq.quantize(model, RECIPE, calib=[_calib()])


def test_fold_is_exact_and_the_plan_is_solved_on_the_scaled_model(awq_allocated):
    model, qmodel = awq_allocated
    scaled = copy.deepcopy(model)
    groups = apply_awq(scaled, [_calib()], bits=3, group_size=32)
    x = _ids(1)
    ref = _logits(model, x)
    assert float((_logits(scaled, x) - ref).abs().max() / ref.abs().max()) < 1e-5  # the fold is exact in float
    assert {k: g.alpha for k, g in qmodel.edgeq_awq.items()} == {k: g.alpha for k, g in groups.items()}
    assert sum(g.skipped is None and g.alpha > 0 for g in groups.values()) >= 4  # o_proj searched too (no GQA)
    for block, folded in zip(qmodel.model.layers, scaled.model.layers):
        assert torch.equal(block.input_layernorm.weight, folded.input_layernorm.weight)
        assert torch.equal(block.post_attention_layernorm.weight, folded.post_attention_layernorm.weight)
    # the same plan without AWQ, on the model the allocator scaled, is the same quantized model
    plain = edgeq.quantize(scaled, dataclasses.replace(qmodel.edgeq_recipe, awq=False), calib=[_calib()])
    torch.testing.assert_close(_logits(plain, x), _logits(qmodel, x), rtol=0, atol=0)


def test_plan_meets_the_budget_and_repeats_from_the_recipe(awq_allocated):
    model, qmodel = awq_allocated
    layers = quantized_layers(qmodel)
    stored = 8 * sum(m.weight_bytes() for m in layers.values()) / sum(m.in_features * m.out_features for m in layers.values())
    assert 2.5 < stored <= 3.0 and len(layers) == 14
    plan = {row[0]: tuple(row[1:]) for row in qmodel.edgeq_recipe.plan}
    assert plan == {n: ("lopro" if isinstance(m, LoProLinear) else "gptq", getattr(m, "core", m).bits,
                        getattr(m, "core", m).group_size) for n, m in layers.items()}
    recipe = edgeq.recipes.resolve_recipe(qmodel.edgeq_recipe.to_json())
    assert recipe == qmodel.edgeq_recipe and recipe.awq and recipe.awq_group_size == 32
    again = edgeq.quantize(model, recipe, calib=[_calib()])  # a recipe with a plan folds again, plans nothing
    assert again.edgeq_allocation == {}
    torch.testing.assert_close(_logits(again, _ids(2)), _logits(qmodel, _ids(2)), rtol=0, atol=0)


def test_awq_allocated_llama_exports_and_matches_pytorch(awq_allocated, tmp_path):
    _, qmodel = awq_allocated
    assert_exports_and_matches_pytorch(qmodel, _ids(5), tmp_path)


def test_awq_on_a_model_without_a_decoder_is_refused():
    from edgeq.quant.architectures import ArchitectureError

    model = torch.nn.Sequential(torch.nn.Linear(64, 16)).eval()
    with pytest.raises(ArchitectureError, match="AWQ"):
        edgeq.quantize(model, AllocatedRecipe(awq=True), calib=[torch.randn(8, 64)])
