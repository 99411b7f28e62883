"""LRQMM: the corrected layer computes with its dequantized weight, the correction reduces the
error by the residual's captured energy, bits per weight count the factors, and the recipe runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeq
from edgeq.errors import QuantizationError
from edgeq.quant.lrqmm import LowRankCorrectedLinear, LRQMMRecipe, lrqmm_linear, lrqmm_matmul, quantized_matmul, quantize_rows
from edgeq.quant.lopro import rtn_linear


def seeded_linear(k=256, n=96, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    # a few strong directions on top of noise, as trained weights have
    with torch.no_grad():
        lin.weight += 0.5 * torch.randn(n, 4) @ torch.randn(4, k) / k**0.5
    return lin


@pytest.mark.parametrize("factor_dtype", ["float16", "int8"])
def test_forward_is_dequantized_weight(factor_dtype):
    lin = seeded_linear()
    layer = lrqmm_linear(lin, 3, 64, 16, factor_dtype=factor_dtype)
    x = torch.randn(5, 256)
    ref = x @ layer.dequantized_weight().T + lin.bias
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-4)


def test_correction_removes_captured_residual_energy():
    lin = seeded_linear()
    w = lin.weight.detach()
    rtn_err = float((w - rtn_linear(w, 3, 64).dequantized_weight()).norm())
    layer = lrqmm_linear(lin, 3, 64, 32, power_iters=3, factor_dtype="float32")
    residual = w - layer.core.dequantized_weight()
    s = torch.linalg.svdvals(residual)
    best = float(s[32:].square().sum().sqrt())  # optimal rank-32 correction
    err = float((w - layer.dequantized_weight()).norm())
    assert err < rtn_err
    assert err <= 1.05 * best


def test_bits_per_weight_counts_factors():
    layer = lrqmm_linear(seeded_linear(), 4, 128, 8)
    core_bits = 4 + 16 / 128 + 8 / 128
    factor_bits = 16 * 8 * (96 + 256) / (96 * 256)
    assert layer.bits_per_weight == pytest.approx(core_bits + factor_bits)


def test_recipe_on_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    x = torch.randn(8, 64)
    q = edgeq.quantize(model, LRQMMRecipe(bits=4, group_size=32, rank=16))
    plain = edgeq.quantize(model, LRQMMRecipe(bits=4, group_size=32, rank=0))
    assert all(isinstance(q[i], LowRankCorrectedLinear) for i in (0, 2))
    with torch.no_grad():
        rel = float((q(x) - model(x)).norm() / model(x).norm())
        rel_plain = float((plain(x) - model(x)).norm() / model(x).norm())
    assert rel < 0.9 * rel_plain < 0.09
    assert isinstance(model[0], nn.Linear)  # input model untouched
    with pytest.raises(QuantizationError, match="factor_dtype"):
        edgeq.quantize(model, LRQMMRecipe(factor_dtype="int3"))
    with pytest.raises(QuantizationError, match="0: group size 48"):
        edgeq.quantize(model, LRQMMRecipe(group_size=48))


def test_activation_side_compensation():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(192, 160, generator=g), torch.randn(160, 128, generator=g)
    c = a @ b
    direct = float((quantized_matmul(a, b, 4) - c).norm() / c.norm())
    # rank = full rank of the residual: compensation is exact up to the second-order term E_A E_B
    ea, eb = a - quantize_rows(a, 4), b - quantize_rows(b.T, 4).T
    full = float((lrqmm_matmul(a, b, 4, 160, power_iters=6) - c).norm() / c.norm())
    assert full <= 1.05 * float((ea @ eb).norm() / c.norm())
    assert float((lrqmm_matmul(a, b, 4, 16) - c).norm() / c.norm()) < direct
