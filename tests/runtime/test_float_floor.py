"""``edgeq.runtime.float_floor``: the float64 evaluation really leaves float32 (also through a
quantized embedding, which returns float32 rows), and ``judge`` applies the stated rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeq
from edgeq.quant.embedding import quantize_embeddings
from edgeq.runtime.float_floor import InputDtypeRMSNorm, causal_lm_logits, float64_logits, judge


@pytest.fixture(scope="module")
def quantized_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = edgeq.quantize(LlamaForCausalLM(cfg).eval(), "w4g64-rtn")
    quantize_embeddings(model, 4, 32)
    return model


def test_float64_evaluation_is_the_same_model_in_more_precision(quantized_tiny_llama):
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    ref32, ref64 = causal_lm_logits(quantized_tiny_llama, ids), float64_logits(quantized_tiny_llama, ids)
    floor = np.abs(ref32 - ref64).max() / np.abs(ref32).max()
    assert 0 < floor < 1e-5  # rounding differs (float64 is really used), the model does not
    assert next(quantized_tiny_llama.parameters()).dtype == torch.float32  # a copy was widened
    assert not any(isinstance(m, InputDtypeRMSNorm) for m in quantized_tiny_llama.modules())  # and its norms swapped


def test_swapped_rmsnorm_computes_in_float64():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    hf = LlamaRMSNorm(64, eps=1e-6).double()
    torch.nn.init.normal_(hf.weight)
    x = torch.randn(3, 64, dtype=torch.float64)
    exact = hf.weight.detach().numpy() * (x.numpy() / np.sqrt((x.numpy() ** 2).mean(-1, keepdims=True) + 1e-6))
    with torch.no_grad():
        swapped, stock = InputDtypeRMSNorm(hf.weight, hf.variance_epsilon)(x).numpy(), hf(x).numpy()
    assert np.abs(swapped - exact).max() < 1e-14  # float64 rounding only
    assert np.abs(stock - exact).max() > 1e-8  # HF's norm rounds through float32: why it is swapped


def test_judge_keeps_the_bar_unless_the_reference_is_less_exact():
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(1000)
    exact /= np.abs(exact).max()  # errors below are then relative to the scale
    ref32 = (exact + rng.choice([-1, 1], 1000) * 1e-6).astype(np.float32)
    assert judge(ref32 + 5e-5, ref32, exact).tol == 1e-4 and judge(ref32 + 5e-5, ref32, exact).ok
    assert not judge(ref32 + 2e-4, ref32, exact).ok  # plain bar: 2e-4 of the scale fails
    noisy = (exact + rng.choice([-1, 1], 1000) * 3e-4).astype(np.float32)  # a reference 3e-4 off
    check = judge(exact + 1e-5, noisy, exact)  # a runtime closer to the exact value than PyTorch
    assert check.tol == pytest.approx(2 * check.floor) and check.ok
    assert not judge(exact + 5e-4, noisy, exact).ok  # worse than the reference against float64
