"""SmolLM2-135M through edgeq.export, truncated to its first 2 decoder layers to keep CI time down
(same shapes, same ops, 1/15 of the layers): stock onnxruntime at accuracy level 0 matches the
PyTorch quantized model within 1e-4 of the logits' scale, with dynamic batch and sequence. Group 64:
the hidden size 576 is not a multiple of 128."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

import edgeq
from edgeq.model_info import model_info
from edgeq.quant.embedding import quantize_embeddings
from edgeq.runtime.ort import ort_session

pytestmark = pytest.mark.slow
TOL = 1e-4


@pytest.fixture(scope="module")
def smollm2_2layers(smollm2):
    from transformers import LlamaForCausalLM

    model, tokenizer = smollm2
    config = type(model.config).from_dict({**model.config.to_dict(), "num_hidden_layers": 2})
    small = LlamaForCausalLM(config).eval()
    missing, _ = small.load_state_dict(model.state_dict(), strict=False)
    assert missing == []
    return small, tokenizer


@pytest.mark.parametrize("preset,weight_format", [("w4g64-rtn", "auto"), ("w3g64-rtn", "auto")])
def test_smollm2_matches_pytorch(tmp_path, smollm2_2layers, preset, weight_format):
    base, tokenizer = smollm2_2layers
    model = edgeq.quantize(base, preset)
    quantize_embeddings(model, 4, 64)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    path = edgeq.export(model, ids, tmp_path / "smollm2.onnx", weight_format=weight_format)
    onnx.checker.check_model(str(path), full_check=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    if preset.startswith("w4"):
        assert ops["DequantizeLinear"] == 14 and ops["LowBitLinear"] == 1  # lm_head shares the embedding table
    else:
        assert ops["LowBitLinear"] == 15
    session = ort_session(path)
    for batch in (ids, torch.randint(0, base.config.vocab_size, (2, 33))):
        got = session.run(None, {"input_ids": batch.numpy()})[0]
        with torch.no_grad():
            ref = model(input_ids=batch, use_cache=False).logits.numpy()
        assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()
    info = model_info(path)
    # every matrix quantized: 4-bit values + fp16/fp32 scales + zero points, well under 5 bits
    assert info.quantized_weights >= 0.99 * info.weights and info.bits_per_weight < 4.6
