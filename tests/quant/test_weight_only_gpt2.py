"""GPT-2's Hugging Face ``Conv1D`` (a Linear that stores its weight as [in, out]) is quantized by
the weight-only methods like any Linear; the quantized model exports and onnxruntime matches it
(issue #17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeq
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.runtime.ort import ort_session


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("preset", ["w4g32-rtn", "w8-rtn"])
def test_gpt2_conv1d_layers_are_quantized(preset):
    model = _tiny_gpt2()
    qmodel = edgeq.quantize(model, preset)
    block = qmodel.transformer.h[0]
    for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        assert isinstance(layer, WeightOnlyLinear)
    ref = model.transformer.h[0].mlp.c_fc  # Conv1D: y = x @ W + b, W [in, out]
    assert (qmodel.transformer.h[0].mlp.c_fc.in_features, qmodel.transformer.h[0].mlp.c_fc.out_features) == ref.weight.shape
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        float_logits, q_logits = model(input_ids=ids).logits, qmodel(input_ids=ids).logits
    # the quantized model is the float one up to rounding of the weights, not a transposed one
    rel = (q_logits - float_logits).abs().max() / float_logits.abs().max()
    assert rel < (0.2 if preset.startswith("w4") else 0.02), float(rel)


def test_gpt2_w4g32_rtn_exports_and_onnxruntime_matches_pytorch(tmp_path):
    qmodel = edgeq.quantize(_tiny_gpt2(), "w4g32-rtn")
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    path = edgeq.export(qmodel, ids, tmp_path / "gpt2.onnx")
    got = ort_session(str(path), accuracy_level=0).run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        expect = qmodel(input_ids=ids).logits.numpy()
    assert got.shape == expect.shape
    assert np.abs(got - expect).max() <= 1e-4 * np.abs(expect).max()  # float32 summation order only
