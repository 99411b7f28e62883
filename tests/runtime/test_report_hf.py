"""``edgeq.validate`` takes a Hugging Face causal LM as its reference, as ``edgeq.export`` does:
both compare/export ``input_ids -> logits`` through the same wrapper (issue #17)."""

from __future__ import annotations

import numpy as np
import torch

import edgeq


def test_validate_unwraps_a_causal_lm_like_export(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    lm = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    onnx_path = edgeq.export(lm, ids, tmp_path / "llama.onnx")
    [report] = edgeq.validate(lm, [onnx_path], [ids.numpy()])
    assert report.ok and len(report.outputs) == 1
    with torch.no_grad():
        scale = np.abs(lm(input_ids=ids).logits.numpy()).max()
    assert report.max_abs <= 1e-4 * scale  # float32 vs float32: summation order only
