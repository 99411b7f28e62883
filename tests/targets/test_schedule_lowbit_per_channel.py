"""Per-channel weight-only presets (one group per row: ``w8-rtn``, ``w4-rtn``) on a tiny Llama:
quantize -> export -> TVM cpu matches PyTorch within the float floor rule, and the packed
kernel with one group per row also cross-compiles for arm64 (issue #17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeq
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from _devices import require_arm64_cross


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("preset", ["w8-rtn", "w4-rtn"])
def test_per_channel_preset_compiles_and_matches_pytorch(tmp_path, preset):
    qmodel = edgeq.quantize(_tiny_llama(), preset)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    onnx_path = edgeq.export(qmodel, ids, tmp_path / "llama.onnx")
    artifact = edgeq.compile(onnx_path, target="cpu", out_dir=tmp_path)
    got = TvmExecutor(artifact.path).run([ids.numpy()])[0]
    check = judge(got, causal_lm_logits(qmodel, ids), float64_logits(qmodel, ids))
    assert check.ok, check.to_dict()


def test_per_channel_preset_cross_compiles_for_arm64(tmp_path):
    require_arm64_cross()
    qmodel = edgeq.quantize(_tiny_llama(), "w4-rtn")
    onnx_path = edgeq.export(qmodel, torch.randint(0, 256, (1, 9)), tmp_path / "llama.onnx")
    artifact = edgeq.compile(onnx_path, target="arm64", out_dir=tmp_path)
    assert artifact.path.stat().st_size > 0


@pytest.mark.parametrize("in_features", [32, 64])
def test_one_group_per_row_with_a_bias_on_a_2d_input(tmp_path, in_features):
    """A classifier head (``Linear(32, 10)`` on ``[batch, 32]``, W4 g32: one group per row) whose
    bias add TVM fuses into the packed kernel: the bias was added twice (error 0.16 of 1.07)."""
    torch.manual_seed(0)
    qmodel = edgeq.quantize(torch.nn.Sequential(torch.nn.Linear(in_features, 10)), "w4g32-rtn")
    x = torch.randn(3, in_features)
    artifact = edgeq.compile(edgeq.export(qmodel, x, tmp_path / "head.onnx"), target="cpu", out_dir=tmp_path)
    got = TvmExecutor(artifact.path).run([x.numpy()])[0]
    want = qmodel(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
