"""WeightOnlyLinear computes with the documented formula and counts its bytes."""

from __future__ import annotations

import pytest
import torch

from edgeq.errors import QuantizationError
from edgeq.quant.weight_only import WeightOnlyLinear


def test_forward_matches_formula():
    g = torch.Generator().manual_seed(0)
    n, k, gs, bits = 6, 64, 32, 3
    q = torch.randint(0, 8, (n, k), generator=g)
    scales = torch.rand(n, k // gs, generator=g).half()
    zeros = torch.full((n, k // gs), 4, dtype=torch.uint8)
    layer = WeightOnlyLinear.from_integers(q, scales, zeros, bits, bias=torch.ones(n))
    w = (q.float() - 4) * scales.float().repeat_interleave(gs, dim=1)
    x = torch.randn(3, k, generator=g)
    torch.testing.assert_close(layer(x), x @ w.T + 1, rtol=0, atol=1e-5)
    # packed 3-bit weight, fp16 scale and uint8 zero per 32 weights
    assert layer.bits_per_weight == pytest.approx(3 + 16 / 32 + 8 / 32)


def test_group_must_divide():
    with pytest.raises(QuantizationError, match="group size 48"):
        WeightOnlyLinear(64, 2, 4, 48, torch.zeros(2, 32), torch.zeros(2, 1), torch.zeros(2, 1))
