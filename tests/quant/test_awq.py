"""AWQ-style scales (issue #20): folding them is exact on every decoder family edgeq describes
(the float model's logits move by less than 1e-5 of their scale), each group's searched scales
never raise its calibration output error over plain RTN and cut it where a channel is an
outlier, the groups without an exact fold site are skipped with the reason, and an AWQ-quantized
tiny Llama exports, runs in onnxruntime and compiles for TVM cpu (arm64 cross-compiled) within
the float floor rule."""

from __future__ import annotations

import copy

import pytest
import torch

import edgeq
from edgeq.errors import QuantizationError
from edgeq.quant.architectures import ArchitectureError, NormForm, architecture_of
from edgeq.quant.awq import apply_awq
from edgeq.quant.quarot import rotate_decoder
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.quant.weight_only_recipes import RTNRecipe
from edgeq.recipes import resolve_recipe
from _devices import assert_aarch64_library, require_arm64_cross
from _float_floor_checks import assert_exports_and_matches_pytorch

VOCAB = 128


def tiny_decoder(model_type: str, kv_heads: int = 4) -> torch.nn.Module:
    """A 2-layer random-init decoder (hidden 64, 4 heads; ``kv_heads`` < 4 is grouped-query) with
    non-trivial norm scales and biases, so that folding into them is tested."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16, max_position_embeddings=64,
                    bos_token_id=0, eos_token_id=1, pad_token_id=0)
    if model_type == "gpt2":
        settings = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings)).eval()
    offset = architecture_of(model).norm_form is NormForm.RMS_OFFSET
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.uniform_(-0.5, 0.5) if offset else p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def ids(seed: int, batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("model_type,kv_heads", [("llama", 4), ("qwen2", 2), ("qwen3", 4), ("gemma", 4),
                                                 ("gemma2", 2), ("phi3", 4), ("gpt2", 4)])
def test_folded_scales_keep_the_float_model(model_type, kv_heads):
    model = tiny_decoder(model_type, kv_heads)
    scaled = copy.deepcopy(model)
    groups = apply_awq(scaled, [ids(2, batch=4)], bits=3, group_size=32)
    x = ids(1)
    assert rel(logits(scaled, x), logits(model, x)) < 1e-5
    searched = [g for g in groups.values() if g.skipped is None]
    assert len(searched) >= 3 * 2  # q/k/v, gate/up and down in each of the 2 blocks at least
    assert any(g.alpha > 0 and not torch.allclose(g.scales, torch.ones_like(g.scales)) for g in searched)
    for g in searched:
        assert g.error <= g.rtn_error  # α = 0 is plain RTN, on the grid


def test_groups_without_an_exact_fold_are_skipped_with_the_reason():
    gqa = apply_awq(tiny_decoder("llama", kv_heads=2), [ids(2)], bits=3, group_size=32)
    assert "grouped-query attention" in gqa["model.layers.0.self_attn.o_proj"].skipped
    full = apply_awq(tiny_decoder("llama", kv_heads=4), [ids(2)], bits=3, group_size=32)
    assert full["model.layers.0.self_attn.o_proj"].skipped is None
    assert full["model.layers.0.self_attn.o_proj"].fold_site == "model.layers.0.self_attn.v_proj"
    gpt2 = apply_awq(tiny_decoder("gpt2"), [ids(2)], bits=3, group_size=32)
    assert "ungated MLP" in gpt2["transformer.h.0.mlp.c_proj"].skipped
    assert gpt2["transformer.h.0.attn.c_attn"].fold_site == "transformer.h.0.ln_1"


def test_scales_cut_the_error_of_an_outlier_channel():
    """One norm channel 30x larger (the activation outliers AWQ is for): the search scales that
    channel's weights up and the group's calibration output error falls well below RTN's."""
    model = tiny_decoder("llama")
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight[5] = 30.0
    groups = apply_awq(model, [ids(2, batch=4)], bits=3, group_size=32)
    mlp = groups["model.layers.0.mlp.gate_proj+model.layers.0.mlp.up_proj"]
    assert mlp.alpha > 0 and int(mlp.scales.argmax()) == 5
    assert mlp.error < 0.7 * mlp.rtn_error, (mlp.error, mlp.rtn_error)


def test_after_a_rotation_the_fold_is_exact_and_down_proj_is_skipped():
    """With hadamard=True the scales are searched on the rotated model (folding them before the
    rotation would cancel: the rotation folds the norms back into the weights)."""
    model = tiny_decoder("llama")
    rotated = rotate_decoder(copy.deepcopy(model), seed=1)
    x = ids(1)
    ref = logits(rotated, x)
    groups = apply_awq(rotated, [ids(2)], bits=3, group_size=32)
    assert rel(logits(rotated, x), ref) < 1e-5
    assert "not a plain nn.Linear" in groups["model.layers.0.mlp.down_proj"].skipped
    qmodel = edgeq.quantize(model, RTNRecipe(skip=("lm_head",), bits=4, group_size=32, hadamard=True, awq=True),
                            calib=[ids(2)])
    assert rel(logits(qmodel, x), logits(model, x)) < 0.5


def test_awq_needs_calibration_and_a_known_architecture():
    recipe = resolve_recipe("w3g128-awq-rtn")
    assert recipe.awq and recipe.needs_calibration and not resolve_recipe("w3g128-rtn").needs_calibration
    assert resolve_recipe(recipe.to_json()) == recipe
    with pytest.raises(QuantizationError, match="awq=True needs calibration data"):
        edgeq.quantize(tiny_decoder("llama"), recipe)
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=128, is_decoder=True)).eval()
    with pytest.raises(ArchitectureError, match="AWQ scaling.*model_type 'bert'"):
        edgeq.quantize(bert, recipe, calib=[ids(2)])


@pytest.fixture(scope="module")
def awq_llama():
    model = tiny_decoder("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    return model, edgeq.quantize(model, RTNRecipe(skip=("lm_head",), bits=3, group_size=32, awq=True),
                                 calib=[ids(2, batch=4)])


def test_awq_quantized_llama_exports_and_matches_pytorch(awq_llama, tmp_path):
    model, qmodel = awq_llama
    assert sum(isinstance(m, WeightOnlyLinear) for m in qmodel.modules()) == 14
    assert not torch.equal(qmodel.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)
    path = assert_exports_and_matches_pytorch(qmodel, ids(5, batch=1, length=9), tmp_path)
    require_arm64_cross()
    arm = edgeq.compile(path, target="arm64", out_dir=tmp_path / "arm64")
    assert_aarch64_library(arm.path)


def test_awq_quantized_llama_saves_and_reloads(awq_llama, tmp_path):
    """The scales are plain weights: a saved AWQ model reloads to the same logits."""
    from edgeq.quant.serialize import load_quantized, save_quantized

    _, qmodel = awq_llama
    path = save_quantized(qmodel, tmp_path / "awq.safetensors", "huggingface")
    x = ids(3)
    assert torch.equal(logits(load_quantized(path), x), logits(qmodel, x))
