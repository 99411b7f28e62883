"""The Triton low-bit dequantize-matmul, run by Triton's interpreter on CPU, against the PyTorch
reference (``WeightOnlyLinear``). The interpreter is chosen when the kernel module is imported,
so the check runs in a fresh interpreter with ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = r"""
import torch
from edgeq.quant import weight_only
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.quant.triton_lowbit import lowbit_linear

assert weight_only.cuda_matmul() is lowbit_linear  # what WeightOnlyLinear uses for CUDA inputs
gen = torch.Generator().manual_seed(0)
for bits, k, n, group, m, bias in [(4, 256, 80, 64, 5, True), (3, 128, 48, 32, 3, False),
                                   (2, 192, 40, 64, 17, True), (8, 64, 24, 64, 1, False)]:
    q = torch.randint(0, 1 << bits, (n, k), generator=gen)
    scales = (torch.rand(n, k // group, generator=gen) * 0.05 + 0.01).half()
    zeros = torch.randint(0, 1 << bits, (n, k // group), generator=gen)
    layer = WeightOnlyLinear.from_integers(q, scales, zeros, bits, bias=torch.randn(n, generator=gen) if bias else None)
    x = torch.randn(2, m, k, generator=gen)
    expect = layer(x)  # CPU tensor: the PyTorch reference path
    got = lowbit_linear(layer, x)
    err = ((got - expect).abs().max() / expect.abs().max()).item()
    assert got.shape == expect.shape and err < 1e-5, (bits, err)
    print(bits, "ok", err)
"""


@pytest.mark.slow
def test_triton_kernel_matches_weight_only_layer_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" ok ") == 4
