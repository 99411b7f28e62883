"""R1SVD against the optimal truncated SVD, its adaptive rank, and factor storage."""

from __future__ import annotations

import pytest
import torch

from edgeq.errors import QuantizationError
from edgeq.quant.lopro import rtn_linear
from edgeq.quant.r1svd import compress_factors, r1svd


def decaying(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, 64)
    return (torch.randn(m, 64, generator=g) * spectrum) @ torch.randn(64, n, generator=g) + 0.01 * torch.randn(m, n, generator=g)


def rel_err(w, lr):
    return float((w - lr.matrix()).norm() / w.norm())


def optimal_err(w, r):
    s = torch.linalg.svdvals(w)
    return float(s[r:].square().sum().sqrt() / s.square().sum().sqrt())


@pytest.mark.parametrize("kind", ["decaying", "gaussian"])
@pytest.mark.parametrize("rank", [8, 24])
def test_error_within_factor_of_truncated_svd(kind, rank):
    # bound: residual within 1.10x of the best rank-r residual (Eckart-Young) with 4 power iterations
    w = decaying(200, 300) if kind == "decaying" else torch.randn(200, 300, generator=torch.Generator().manual_seed(1))
    lr = r1svd(w, rank, power_iters=4)
    assert lr.rank == rank
    assert rel_err(w, lr) <= 1.10 * optimal_err(w, rank)


def test_energy_stop_finds_exact_rank():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(120, 5, generator=g) @ torch.randn(5, 90, generator=g) + 1e-4 * torch.randn(120, 90, generator=g)
    lr = r1svd(w, 40, power_iters=3, energy_tol=1e-5)
    assert lr.rank == 5
    assert rel_err(w, lr) < 1e-3


def test_quantization_error_stop():
    # the residual's 4-bit RTN error stops improving once the spiky low-rank part is gone
    g = torch.Generator().manual_seed(3)
    w = 0.05 * torch.randn(96, 128, generator=g)
    w += 3.0 * torch.randn(96, 3, generator=g) @ torch.randn(3, 128, generator=g)

    def quant_err(r):
        return float((r - rtn_linear(r, 4, 32).dequantized_weight()).norm())

    lr = r1svd(w, 64, power_iters=3, residual_error=quant_err, rel_improvement=0.02)
    assert 3 <= lr.rank < 64
    assert quant_err(w - lr.matrix()) < 0.2 * quant_err(w)


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-3), ("bfloat16", 1e-2), ("int8", 2e-2)])
def test_compressed_factors(dtype, tol):
    w = decaying(64, 96)
    lr = r1svd(w, 16, power_iters=3)
    buffers, decoded = compress_factors(lr, dtype)
    assert float((decoded.matrix() - lr.matrix()).norm() / lr.matrix().norm()) < tol
    if dtype == "int8":
        assert buffers["u"].dtype == torch.int8 and buffers["u_scale"].shape == (16,)


def test_bad_input():
    with pytest.raises(QuantizationError, match="2-D"):
        r1svd(torch.zeros(2, 3, 4), 2)
    with pytest.raises(QuantizationError, match="factor dtype"):
        compress_factors(r1svd(torch.randn(4, 4), 2), "int4")
