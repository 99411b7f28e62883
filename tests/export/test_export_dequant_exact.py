"""The exported dequantization is WeightOnlyLinear's arithmetic bit for bit: ``(q - zeros) *
float(scales)`` with float16 scales widened exactly, in every weight format onnxruntime runs.

Fed the identity matrix, a linear layer outputs its own weight (transposed) with no rounding:
each output is one product plus exact zeros. Any difference in the dequantization (the order of
``(q - z) * s``, a scale rounded through another dtype, ``q * s - z * s`` fused forms) shows up
as a bit mismatch here, independently of summation order, which is what the whole-model tests'
1e-4 bar absorbs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgeq
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.runtime.ort import ort_session

N, K, GROUP = 48, 128, 32


class Wrapped(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def random_layer(bits: int, seed: int, scale_dtype=torch.float16) -> WeightOnlyLinear:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (N, K), generator=g).to(torch.uint8)
    # scales spanning many exponents, with full mantissas
    scales = (torch.rand(N, K // GROUP, generator=g) * 10 ** torch.randint(-4, 1, (N, K // GROUP), generator=g)).to(scale_dtype)
    zeros = torch.randint(0, 1 << bits, (N, K // GROUP), generator=g).to(torch.uint8)
    return WeightOnlyLinear.from_integers(q, scales, zeros, bits)


@pytest.mark.parametrize("bits,opset,weight_format,scale_dtype", [
    (2, 21, "edgeq", torch.float16), (3, 21, "edgeq", torch.float16), (4, 21, "edgeq", torch.float16),
    (8, 21, "edgeq", torch.float16),
    # standard blocked DequantizeLinear (onnxruntime fuses it into MatMulNBits)
    (4, 21, "auto", torch.float16), (8, 21, "auto", torch.float16), (2, 25, "auto", torch.float16),
    # float32 scales: (q - z) * s is one rounding, so here the order of the arithmetic matters too
    (4, 21, "edgeq", torch.float32), (3, 21, "edgeq", torch.float32), (4, 21, "auto", torch.float32),
])
def test_identity_input_returns_the_layers_weight_exactly(tmp_path, bits, opset, weight_format, scale_dtype):
    layer = random_layer(bits, seed=bits, scale_dtype=scale_dtype)
    eye = torch.eye(K)
    path = edgeq.export(Wrapped(layer), eye, tmp_path / "w.onnx", opset=opset, weight_format=weight_format)
    got = ort_session(path).run(None, {"input": eye.numpy()})[0]
    want = layer.dequantized_weight().T.numpy()
    with torch.no_grad():
        np.testing.assert_array_equal(layer(eye).numpy(), want)  # the PyTorch layer itself
    np.testing.assert_array_equal(got, want)
