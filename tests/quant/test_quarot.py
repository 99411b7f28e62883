"""QuaRot rotation leaves the float model's outputs unchanged (and moves down_proj's outlier
channels away), on a small random LLaMA and on SmolLM2."""

from __future__ import annotations

import copy

import pytest
import torch

import edgeq
from edgeq.errors import QuantizationError
from edgeq.quant.hadamard import OnlineHadamard
from edgeq.quant.quarot import rotate_decoder


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)  # non-trivial RMSNorm scales, so folding them is tested
    return model


def test_rotation_keeps_logits(tiny_llama):
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    rotated = rotate_decoder(copy.deepcopy(tiny_llama), seed=3)
    with torch.no_grad():
        ref, out = tiny_llama(ids).logits, rotated(ids).logits
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    # weights really changed: norms folded, lm_head untied, online Hadamard before down_proj
    assert torch.equal(rotated.model.layers[0].input_layernorm.weight, torch.ones(48))
    assert rotated.lm_head.weight.data_ptr() != rotated.model.embed_tokens.weight.data_ptr()
    assert isinstance(rotated.model.layers[0].mlp.down_proj[0], OnlineHadamard)
    assert not torch.allclose(rotated.model.layers[0].self_attn.q_proj.weight, tiny_llama.model.layers[0].self_attn.q_proj.weight)


def test_rotated_quantization_runs_and_stays_close(tiny_llama):
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))
    recipe = edgeq.recipes.resolve_recipe('{"method": "gptq", "bits": 8, "group_size": 16, "hadamard": true, "skip": ["lm_head"]}')
    q = edgeq.quantize(tiny_llama, recipe, calib=[ids])
    with torch.no_grad():
        ref, out = tiny_llama(ids).logits, q(ids).logits
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()  # 8 bits: within 2% of the logit range


def test_rotation_needs_a_known_decoder(digits_model):
    with pytest.raises(QuantizationError, match="DigitsCNN has no config.model_type"):
        edgeq.quantize(digits_model, '{"method": "rtn", "bits": 8, "group_size": null, "hadamard": true}')


@pytest.mark.slow
def test_smollm2_rotation_keeps_logits(smollm2):
    model, tok = smollm2
    ids = tok("The quick brown fox jumps over the lazy dog. " * 3, return_tensors="pt")["input_ids"]
    rotated = rotate_decoder(copy.deepcopy(model), seed=0)
    with torch.no_grad():
        ref, out = model(ids).logits, rotated(ids).logits
    # float32 through 30 blocks: within 2e-3 of logits of magnitude ~20
    assert (out - ref).abs().max() < 2e-3
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
