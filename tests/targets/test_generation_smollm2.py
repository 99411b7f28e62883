"""SmolLM2-135M W4 (g64 RTN linears, 4-bit tied embedding / lm_head table) as a generation
artifact: greedy generation of 32 tokens gives the same ids on TVM (host, and the emulated arm64
device) and on onnxruntime with the KV-cache file, and every step's logits equal the PyTorch
model's full-sequence forward within the float floor rule (bar 1e-4 of the scale). PyTorch's
greedy choice is checked teacher-forced: one forward over prompt + generated tokens, whose argmax
at every step is the generated token, is exactly what PyTorch's greedy generation would produce
(by induction over the steps), at the cost of one forward instead of 32 (the packed W4 model
unpacks its weights on every PyTorch call)."""

from __future__ import annotations

import pytest
import torch

import edgeq
from edgeq.export_kv import read_generation_metadata
from edgeq.quant.embedding import quantize_embeddings
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.tvm_generation import TvmCausalLMSession

from _devices import uses_arm64_device
from _kv_cache import OrtSession, greedy

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
MAX_CONTEXT = 128


@pytest.fixture(scope="module")
def smollm2_kv(smollm2, tmp_path_factory):
    """(quantized model, prompt ids, KV-cache file, token ids of greedy generation on onnxruntime,
    PyTorch's float32 and float64 logits of the steps that chose them)."""
    model, tokenizer = smollm2
    qmodel = edgeq.quantize(model, "w4g64-rtn")
    quantize_embeddings(qmodel, 4, 64)
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    path = edgeq.export(qmodel, None, tmp_path_factory.mktemp("smollm2_kv") / "smollm2_w4_kv.onnx", kv_cache=True,
                        max_context=MAX_CONTEXT)
    tokens, _ = greedy(OrtSession(path, read_generation_metadata(path)), prompt[0].numpy(), NEW_TOKENS)
    steps = torch.cat([prompt, torch.tensor([tokens[:-1]])], dim=1)
    first = prompt.shape[1] - 1  # step t's logits are those of position P - 1 + t
    ref32 = causal_lm_logits(qmodel, steps)[0, first:]
    ref64 = float64_logits(qmodel, steps)[0, first:]
    assert ref32.argmax(-1).tolist() == tokens  # PyTorch's greedy generation gives the same ids
    return qmodel, prompt[0].numpy(), path, tokens, ref32, ref64


def check(session, smollm2_kv):
    _, prompt, _, tokens, ref32, ref64 = smollm2_kv
    got_tokens, logits = greedy(session, prompt, NEW_TOKENS)
    assert got_tokens == tokens
    result = judge(logits, ref32, ref64)
    assert result.ok, result.to_dict()


def test_onnxruntime_and_tvm_on_the_host(smollm2_kv, tmp_path):
    _, _, path, _, _, _ = smollm2_kv
    check(OrtSession(path, read_generation_metadata(path)), smollm2_kv)
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path)
    assert art.generation["max_context"] == MAX_CONTEXT
    assert art.weight_bytes <= 1.05 * art.onnx_weight_bytes  # one packed copy for prefill and decode
    check(TvmCausalLMSession(art.path), smollm2_kv)


@pytest.mark.device
@uses_arm64_device
def test_tvm_on_the_arm64_device(smollm2_kv, tmp_path):
    from _devices import running_arm64_device

    device = running_arm64_device()
    _, _, path, _, _, _ = smollm2_kv
    art = edgeq.compile(path, target="arm64", out_dir=tmp_path)
    session = TvmCausalLMSession(art.path, device=device.url)
    try:
        check(session, smollm2_kv)
    finally:
        session.close()
