"""LoPRo: the inference form (permute, block Hadamard, low-bit matmul, salient block, low-rank
branch) computes with the dequantized weight; it beats plain RTN/GPTQ on a seeded matrix with
outlier columns; bits per weight count every part; the recipe runs and rejects bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeq
from edgeq.errors import QuantizationError
from edgeq.maths.hadamard import hadamard_matrix
from edgeq.quant.gptq import gptq_quantize_weight
from edgeq.quant.lopro import LoProLinear, LoProRecipe, block_hadamard, lopro_linear, rtn_linear
from edgeq.quant.lrqmm import LRQMMRecipe


@pytest.fixture(scope="module")
def outlier_problem():
    """Correlated inputs with a few loud channels; a weight with a low-rank part and outlier columns."""
    g = torch.Generator().manual_seed(0)
    k, n = 256, 128
    x = torch.randn(2048, k, generator=g) @ (torch.randn(k, k, generator=g) / 16)
    x[:, torch.randperm(k, generator=g)[:6]] *= 20
    w = 0.02 * torch.randn(n, k, generator=g) + 0.02 * torch.randn(n, 4, generator=g) @ torch.randn(4, k, generator=g)
    w[:, torch.randperm(k, generator=g)[:5]] *= 8
    return x, w, x.T @ x


def output_err(x, w, w_hat):
    return float((x @ (w - w_hat).T).norm() / (x @ w.T).norm())


@pytest.mark.parametrize("block", [32, 48])
def test_block_hadamard_matches_dense_and_inverts(block):
    x = torch.randn(3, 4 * block)
    dense = x @ torch.block_diag(*[hadamard_matrix(block)] * 4)
    torch.testing.assert_close(block_hadamard(x, block), dense, rtol=0, atol=1e-5)
    torch.testing.assert_close(block_hadamard(block_hadamard(x, block), block, inverse=True), x, rtol=0, atol=1e-5)


def test_block_size_without_hadamard_matrix(outlier_problem):
    _, w, h = outlier_problem
    with pytest.raises(QuantizationError, match="no Hadamard matrix of size 36"):
        lopro_linear(w[:, :252], h[:252, :252], bits=3, group_size=36, rank=0, block_size=36, salient_blocks=0)


@pytest.mark.parametrize("quantizer, rank, salient, factor_dtype", [
    ("gptq", 8, 1, "float16"), ("rtn", 8, 1, "int8"), ("gptq", 0, 0, "float16"), ("rtn", 4, 2, "bfloat16")])
def test_inference_form_matches_dequantized_weight(outlier_problem, quantizer, rank, salient, factor_dtype):
    x, w, h = outlier_problem
    bias = torch.randn(w.shape[0])
    layer = lopro_linear(w, h, bits=3, group_size=64, rank=rank, block_size=64, salient_blocks=salient,
                         factor_dtype=factor_dtype, quantizer=quantizer, bias=bias)
    xs = x[:16]
    ref = xs @ layer.dequantized_weight().T + bias
    # float32 reassociation only: 1e-5 of the output scale
    torch.testing.assert_close(layer(xs), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("bits", [2, 3])
def test_beats_plain_rtn_and_gptq(outlier_problem, bits):
    x, w, h = outlier_problem
    rtn = output_err(x, w, rtn_linear(w, bits, 64).dequantized_weight())
    gptq = output_err(x, w, gptq_quantize_weight(w, h, bits, 64).dequantize())
    lopro_rtn = lopro_linear(w, h, bits=bits, group_size=64, rank=8, block_size=64, salient_blocks=1, quantizer="rtn")
    lopro_gptq = lopro_linear(w, h, bits=bits, group_size=64, rank=8, block_size=64, salient_blocks=1)
    # bound: at most half the plain method's output error on this matrix
    assert output_err(x, w, lopro_rtn.dequantized_weight()) < 0.5 * rtn
    assert output_err(x, w, lopro_gptq.dequantized_weight()) < 0.5 * gptq


def test_bits_per_weight_counts_every_part(outlier_problem):
    _, w, h = outlier_problem
    n, k = w.shape
    layer = lopro_linear(w, h, bits=2, group_size=64, rank=8, block_size=64, salient_blocks=1)
    core = (k - 64) * n * (2 + 24 / 64)
    salient = 64 * n * (8 + 24 / 64)
    factors = 8 * (n + k) * 16
    perm = 16 * k  # int16 permutation
    assert layer.bits_per_weight == pytest.approx((core + salient + factors + perm) / (n * k))
    assert layer.index_bytes() == 2 * k and layer.perm.dtype == torch.int16


def test_rank_chosen_by_residual_score():
    """A weight with 3 strong directions on top of noise: the residual-score rule keeps the 3
    components that pay and stops there, well under the rank bound."""
    g = torch.Generator().manual_seed(3)
    n, k = 128, 256
    w = 0.02 * torch.randn(n, k, generator=g) + torch.randn(n, 3, generator=g) @ torch.randn(3, k, generator=g) * 0.3
    x = torch.randn(512, k, generator=g)
    h = x.T @ x
    layer = lopro_linear(w, h, bits=3, group_size=64, rank=16, block_size=64, salient_blocks=0, rank_min_gain=0.05)
    assert layer.rank == 3
    fixed = lopro_linear(w, h, bits=3, group_size=64, rank=16, block_size=64, salient_blocks=0)
    assert fixed.rank == 16 and layer.bits_per_weight < fixed.bits_per_weight


def test_recipe_on_model_and_bad_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    calib = [torch.randn(64, 128) for _ in range(32)]
    # blocks and groups of 64 (not the defaults, 32): on these 128-input layers a 64-column salient block
    q = edgeq.quantize(model, LoProRecipe(bits=4, rank=4, block_size=64, group_size=64), calib=calib)
    assert isinstance(q[0], LoProLinear) and isinstance(q[2], LoProLinear)
    x = torch.randn(16, 128)
    plain_rtn = edgeq.quantize(model, LRQMMRecipe(bits=4, group_size=64, rank=0))
    with torch.no_grad():
        err = float((q(x) - model(x)).norm() / model(x).norm())
        err_rtn = float((plain_rtn(x) - model(x)).norm() / model(x).norm())
    # uniform-init weights have no outliers, so rotation gains nothing here (it makes their
    # flat distribution Gaussian-tailed); GPTQ and the salient/low-rank parts still must beat plain 4-bit RTN
    assert err < 0.9 * err_rtn
    with pytest.raises(QuantizationError, match="calibration data"):
        edgeq.quantize(model, LoProRecipe())
    with pytest.raises(QuantizationError, match="layer 0: block size 48"):
        edgeq.quantize(model, LoProRecipe(block_size=48, quantizer="rtn"))
    with pytest.raises(QuantizationError, match="quantizer"):
        edgeq.quantize(model, LoProRecipe(quantizer="awq"))


def test_clip_search_lowers_two_bit_error(outlier_problem):
    """At 2 bits the min-max grid wastes levels on the rotated (Gaussian-like) columns; the
    least-squared-error clip ratio per group must lower the output error."""
    x, w, h = outlier_problem
    knobs = dict(bits=2, group_size=32, rank=8, block_size=32, salient_blocks=1, factor_dtype="int8")
    plain = output_err(x, w, lopro_linear(w, h, **knobs).dequantized_weight())
    clipped_layer = lopro_linear(w, h, clip_steps=20, **knobs)
    # bound: at least 5% below the unclipped error on this matrix
    assert output_err(x, w, clipped_layer.dequantized_weight()) < 0.95 * plain
    xs = x[:8]
    ref = xs @ clipped_layer.dequantized_weight().T
    torch.testing.assert_close(clipped_layer(xs), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
