"""Hadamard matrices: orthogonal for every construction; the factored transform equals the dense matmul."""

from __future__ import annotations

import pytest
import torch

from edgeq.errors import QuantizationError
from edgeq.maths.hadamard import (
    hadamard_factors,
    hadamard_matrix,
    hadamard_transform,
    random_hadamard_matrix,
    random_signs,
)
from edgeq.quant.hadamard import OnlineHadamard


@pytest.mark.parametrize("n", [1, 2, 12, 20, 28, 64, 24, 40, 56, 144, 576, 1536])
def test_orthogonal_and_fast_transform_matches_dense(n):
    h = hadamard_matrix(n, torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    # entries are ±1/sqrt(n): a true Hadamard matrix, not just any orthogonal one
    assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5), atol=1e-12)
    x = torch.randn(3, 5, n, dtype=torch.float64)
    assert torch.allclose(hadamard_transform(x), x @ h, atol=1e-12)


def test_smollm2_sizes_use_12_point_factors():
    assert hadamard_factors(576) == (12, 12, 4)
    assert hadamard_factors(1536) == (12, 128)
    assert hadamard_factors(64) == (64,)


def test_unsupported_size_names_it():
    with pytest.raises(QuantizationError, match="size 36"):
        hadamard_factors(36)


def test_randomized_is_orthogonal():
    q = random_hadamard_matrix(576, seed=3, dtype=torch.float64)
    assert torch.allclose(q @ q.T, torch.eye(576, dtype=torch.float64), atol=1e-12)
    assert not torch.equal(random_signs(576, 3), random_signs(576, 4))


def test_online_hadamard_per_head_matches_its_matrix():
    m = OnlineHadamard(576, block_size=64, signs=random_signs(576, 0))
    x = torch.randn(2, 7, 576)
    torch.testing.assert_close(m(x), x @ m.matrix(), atol=1e-5, rtol=0)
    with pytest.raises(QuantizationError, match="size 576"):
        m(torch.randn(2, 64))
