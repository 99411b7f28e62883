"""``edgeq.export(..., kv_cache=True)``: one ONNX file that stock onnxruntime runs token by token
(prefill on an empty cache, then decode steps feeding ``present`` back as ``past``) and whose
per-position logits equal the PyTorch model's full-sequence forward, within the float floor rule
(``edgeq.runtime.float_floor``, bar 1e-4 of the logits' scale)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import edgeq
from edgeq.errors import ExportError
from edgeq.export_kv import METADATA_KEY, read_generation_metadata
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.ort import ort_session

from test_export_models import float_matrices, op_histogram
from _kv_cache import VOCAB, ort_logits_by_steps, quantized, tiny_causal_lm

IDS = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def llama_files(tmp_path_factory):
    """(model, path) for a tiny Llama in float and W4 (4-bit tied embedding / lm_head) and W4 with
    an 8-bit table; exported once."""
    out = tmp_path_factory.mktemp("kv")
    files = {}
    for name, model in [("float", tiny_causal_lm()), ("w4", quantized(tiny_causal_lm())),
                        ("w4-e8", quantized(tiny_causal_lm(), embedding_bits=8))]:
        files[name] = model, edgeq.export(model, None, out / f"{name}.onnx", kv_cache=True)
    return files


def test_signature_and_metadata(llama_files):
    _, path = llama_files["w4"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    inputs, outputs = {i.name: dims(i) for i in proto.graph.input}, {o.name: dims(o) for o in proto.graph.output}
    assert inputs == {
        "input_ids": ["batch", "seq"], "attention_mask": ["batch", "past + seq"], "position_ids": ["batch", "seq"],
        **{f"past_key_values.{i}.{k}": ["batch", 2, "past", 16] for i in range(2) for k in ("key", "value")},
    }
    assert outputs == {"logits": ["batch", "seq", VOCAB],
                       **{f"present.{i}.{k}": ["batch", 2, "past + seq", 16] for i in range(2) for k in ("key", "value")}}
    meta = read_generation_metadata(path)
    assert meta == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16, "vocab_size": VOCAB, "max_context": 128,
                    "eos_token_ids": [2], "bos_token_id": 1, "model_type": "llama"}
    assert json.loads(next(kv.value for kv in proto.metadata_props if kv.key == METADATA_KEY)) == meta


def test_quantized_weights_stay_quantized(llama_files):
    _, path = llama_files["w4"]
    assert float_matrices(path) == []  # no weight left as a float matrix
    ops = op_histogram(path)
    assert ops["DequantizeLinear"] == 14 and ops["LowBitLinear"] == 1  # the tied head reads the packed table


@pytest.mark.parametrize("name", ["float", "w4", "w4-e8"])
@pytest.mark.parametrize("lengths", [
    [5, 1, 1, 1, 1, 3],  # prefill, decode steps, then a second multi-token chunk
    [1] * 12,  # a one-token prompt (past = 0 and seq = 1), then decode
])
def test_token_by_token_matches_full_forward(llama_files, name, lengths):
    model, path = llama_files[name]
    got = ort_logits_by_steps(ort_session(path), IDS.numpy(), lengths, read_generation_metadata(path))
    ref32, ref64 = causal_lm_logits(model, IDS)[0], float64_logits(model, IDS)[0]
    check = judge(got, ref32, ref64)
    assert check.ok, check.to_dict()
    assert (got.argmax(-1) == ref32.argmax(-1)).all()


OTHER_ARCHS = {"mistral": {}, "qwen2": {}, "qwen3": {}, "phi3": {}, "gemma": {}, "gemma2": {}, "gpt2": {},
               "mistral-window": {"sliding_window": 4}}


@pytest.mark.parametrize("arch", OTHER_ARCHS)
def test_other_architectures(tmp_path, arch):
    """Every causal LM of the support matrix (W4, 4-bit tied table); Gemma2 (window 8) and a Mistral
    with a window of 4 slide their window inside the 12 tokens: the file keeps every token and the
    model's own sliding-window mask applies it."""
    model = quantized(tiny_causal_lm(arch.split("-")[0], **OTHER_ARCHS[arch]))
    path = edgeq.export(model, None, tmp_path / f"{arch}.onnx", kv_cache=True, max_context=64)
    meta = read_generation_metadata(path)
    assert meta["max_context"] == 64 and meta["num_layers"] == 2
    got = ort_logits_by_steps(ort_session(path), IDS.numpy(), [4, 1, 1, 6], meta)
    ref = causal_lm_logits(model, IDS)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_refuses_a_model_without_cache(tmp_path):
    with pytest.raises(ExportError, match="needs a HuggingFace causal LM"):
        edgeq.export(torch.nn.Linear(4, 4), torch.zeros(1, 4), tmp_path / "x.onnx", kv_cache=True)
    assert not (tmp_path / "x.onnx").exists()


def test_quantized_gemma_keeps_its_embedding_scale():
    """Gemma multiplies looked-up rows by sqrt(hidden); the packed table keeps that constant (the
    tied lm_head reads the table without it), so W4 stays near the float model."""
    model = tiny_causal_lm("gemma")
    qmodel = quantized(tiny_causal_lm("gemma"), embedding_bits=8)
    assert qmodel.get_input_embeddings().embed_scale == 8.0
    with torch.no_grad():
        ref, got = model(IDS).logits, qmodel(IDS).logits
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max()
