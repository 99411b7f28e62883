"""Hadamard rotation on every decoder family edgeq describes (issue #17): the rotated float model
gives the unrotated model's logits within 1e-4 of their scale (Gemma's (1+γ) norms and embedding
scale, Gemma2's post-norms, Phi-3's fused qkv/gate_up, Qwen2's q/k/v biases, Qwen3's per-head
q/k norms, GPT-2's LayerNorms made RMSNorms on a mean-free stream); the W4 Hadamard preset stays
near the W4 plain error; the exported rotated W4 model runs in onnxruntime within the float floor
rule; an architecture without facts is refused before any work, naming its model type."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import edgeq
from edgeq.quant.architectures import ArchitectureError, NormForm, architecture_of
from edgeq.quant.embedding import quantize_embeddings
from edgeq.quant.hadamard import OnlineHadamard
from edgeq.quant.quarot import rotate_decoder
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.ort import ort_session

VOCAB = 128
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2"]
_MODELS: dict[str, torch.nn.Module] = {}


def tiny_decoder(model_type: str) -> torch.nn.Module:
    """A 2-layer random-init ``model_type`` decoder (hidden 64, GQA 4/2 heads) with non-trivial norm
    scales and biases, so that folding them is tested; built once per session (callers copy)."""
    if model_type not in _MODELS:
        from transformers import AutoConfig, AutoModelForCausalLM

        settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                        bos_token_id=0, eos_token_id=1, pad_token_id=0)
        if model_type == "gpt2":  # no grouped-query attention; MLP width 4 x hidden
            settings = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=0, eos_token_id=1)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings)).eval()
        offset = architecture_of(model).norm_form is NormForm.RMS_OFFSET
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ("norm" in name or ".ln_" in name) and name.endswith("weight"):  # Gemma: 1 + γ
                    p.uniform_(-0.5, 0.5) if offset else p.uniform_(0.5, 1.5)
                elif name.endswith("bias"):
                    p.normal_(0, 0.1)
        _MODELS[model_type] = model
    return _MODELS[model_type]


def ids(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, 16), generator=torch.Generator().manual_seed(seed))


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def mean_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean error over mean magnitude: a W4 error level that one unlucky logit does not swing."""
    return float((a - b).abs().mean() / b.abs().mean())


@pytest.mark.parametrize("model_type", ARCHS)
def test_rotated_float_model_keeps_logits(model_type):
    model = tiny_decoder(model_type)
    rotated = rotate_decoder(copy.deepcopy(model), seed=3)
    x = ids(1)
    assert rel(logits(rotated, x), logits(model, x)) < 1e-4
    arch = architecture_of(model)
    block, ref_block = arch.blocks(rotated)[0], arch.blocks(model)[0]
    identity = 0.0 if arch.norm_form is NormForm.RMS_OFFSET else 1.0  # the norm now scales by exactly 1
    assert torch.equal(arch.module(block, arch.attn_norm).weight, torch.full((64,), identity))
    assert isinstance(arch.module(block, arch.mlp_out)[0], OnlineHadamard)
    assert not torch.equal(arch.attention_inputs(block)[0].weight, arch.attention_inputs(ref_block)[0].weight)
    assert rotated.lm_head.weight.data_ptr() != rotated.get_input_embeddings().weight.data_ptr()


def test_gemma_default_init_norms_fold_as_one_plus_gamma():
    """Gemma initializes γ = 0 (scale 1): folding γ itself zeroed every weight (logits off by 100%)."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    model = GemmaForCausalLM(GemmaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)).eval()
    x = ids(2)
    assert rel(logits(rotate_decoder(copy.deepcopy(model)), x), logits(model, x)) < 1e-4


@pytest.mark.parametrize("model_type", ARCHS)
def test_w4_hadamard_preset_is_close_to_w4_plain(model_type):
    model, x = tiny_decoder(model_type), ids(4)
    ref = logits(model, x)
    plain = mean_rel(logits(edgeq.quantize(model, "w4g32-rtn"), x), ref)
    got = logits(edgeq.quantize(model, "w4g32-hadamard-rtn"), x)
    assert torch.isfinite(got).all() and got.abs().max() > 0.1 * ref.abs().max()
    # random-init weights have no outlier channels for the rotation to spread: the error stays at
    # the plain W4 level, not below it
    assert mean_rel(got, ref) < 1.5 * plain, (mean_rel(got, ref), plain)


@pytest.mark.parametrize("model_type", ["gemma2", "phi3"])
def test_w4_hadamard_gptq_on_post_norms_and_fused_projections(model_type):
    """GPTQ's block-by-block Hessians through Gemma2's rotated post-norms and Phi-3's fused layers."""
    model, x, calib = tiny_decoder(model_type), ids(4), [ids(10), ids(11)]  # judged on held-out tokens
    ref = logits(model, x)
    plain = mean_rel(logits(edgeq.quantize(model, "w4g32-gptq", calib=calib), x), ref)
    got = logits(edgeq.quantize(model, "w4g32-hadamard-gptq", calib=calib), x)
    assert torch.isfinite(got).all() and mean_rel(got, ref) < 1.5 * plain, (mean_rel(got, ref), plain)


@pytest.mark.parametrize("model_type", ["gemma", "phi3", "qwen2", "gpt2"])
def test_exported_w4_hadamard_model_matches_pytorch_in_onnxruntime(tmp_path, model_type):
    qmodel = edgeq.quantize(tiny_decoder(model_type), "w4g32-hadamard-rtn")
    quantize_embeddings(qmodel, 8, 32)  # packed token table (Gemma: with its √hidden scale)
    x = ids(5, batch=1)
    path = edgeq.export(qmodel, x, tmp_path / f"{model_type}.onnx")
    got = ort_session(path).run(None, {"input_ids": x.numpy()})[0]
    check = judge(got, causal_lm_logits(qmodel, x), float64_logits(qmodel, x))
    assert check.ok, check.to_dict()
    assert np.abs(got).max() > 0


@pytest.mark.parametrize("model_type", ["gemma", "gemma2"])
def test_quantized_embedding_keeps_gemmas_embedding_scale(model_type):
    """HF's Gemma embedding module multiplies by √hidden; its packed replacement must too (it did
    not: every token's embedding came out 8x too small at hidden 64)."""
    model, x = tiny_decoder(model_type), ids(7)
    qmodel = copy.deepcopy(model)
    quantize_embeddings(qmodel, 8, 32)
    assert mean_rel(logits(qmodel, x), logits(model, x)) < 0.02


def test_unknown_architecture_is_refused_naming_its_model_type():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=128, is_decoder=True)).eval()
    with pytest.raises(ArchitectureError, match="model_type 'bert'.*Known: gemma"):
        edgeq.quantize(model, "w4g32-hadamard-rtn")


@pytest.mark.parametrize("model_type", ["gemma2", "phi3", "qwen3"])
def test_float64_reference_swaps_every_rms_norm(model_type):
    """The float floor's float64 evaluation swaps every HF RMSNorm (each computes in float32),
    rotated post-norms and Qwen3's head norms included."""
    model = rotate_decoder(copy.deepcopy(tiny_decoder(model_type)))
    norm_type = type(model.get_submodule(architecture_of(model).final_norm))
    x = ids(6, batch=1)
    swapped = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: swapped.append(type(m)) if type(m) is norm_type else None)
    try:
        ref32, ref64 = causal_lm_logits(model, x), float64_logits(model, x)
    finally:
        handle.remove()
    assert len(swapped) == len(architecture_of(model).rms_norms(model))  # the float32 run only
    floor = np.abs(ref32 - ref64).max() / np.abs(ref32).max()
    assert 0 < floor < 1e-5


def test_offset_rms_norm_in_float64_is_gemmas_formula():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    from edgeq.runtime.float_floor import InputDtypeRMSNorm

    torch.manual_seed(0)
    hf = GemmaRMSNorm(64, eps=1e-6).double()
    torch.nn.init.normal_(hf.weight)
    x = torch.randn(3, 64, dtype=torch.float64)
    exact = (1 + hf.weight.detach().numpy()) * (x.numpy() / np.sqrt((x.numpy() ** 2).mean(-1, keepdims=True) + 1e-6))
    with torch.no_grad():
        swapped, stock = InputDtypeRMSNorm(hf.weight, hf.eps, offset=True)(x).numpy(), hf(x).numpy()
    assert np.abs(swapped - exact).max() < 1e-14
    assert np.abs(stock - exact).max() > 1e-8  # HF's Gemma norm rounds through float32
