"""A packed low-bit linear on a 2-D input followed by an elementwise op (BERT's pooler: Linear ->
tanh): TVM's FuseOps merges the tanh into the linear's function, and the CPU schedule rebuilt that
function from the linear alone, dropping the tanh (error 0.39 of a 0.84 output)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import edgeq
from edgeq.runtime.executors import TorchExecutor, TvmExecutor


def test_linear_then_tanh_on_a_2d_input_keeps_the_tanh(tmp_path):
    torch.manual_seed(0)
    qmodel = edgeq.quantize(nn.Sequential(nn.Linear(64, 64), nn.Tanh()), "w4g32-rtn")
    x = torch.randn(1, 64)
    artifact = edgeq.compile(edgeq.export(qmodel, x, tmp_path / "pooler.onnx"), target="cpu", out_dir=tmp_path)
    got = TvmExecutor(artifact.path).run([x.numpy()])[0]
    want = TorchExecutor(qmodel).run([x.numpy()])[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
