"""Hadamard matrices of any size that is a power of two times 12, 20 or 28 (or products of
those), and a fast transform that applies them factor by factor.

A size ``n`` is split into factors ``[f1, f2, ..., fm]`` (special 12/20/28-point factors first,
then one power of two) and

    H_n = (H_f1 ⊗ H_f2 ⊗ ... ⊗ H_fm) / sqrt(n)

is orthogonal. Applying it to the last axis of ``x`` reshapes that axis to ``(f1, ..., fm)`` and
multiplies each axis by its small factor, O(n * sum(f)) work instead of a dense O(n^2) matmul;
this is also how an exported ``edgeq.Hadamard`` op runs (Reshape -> MatMul per factor).

Constructions: Sylvester for powers of two; Paley I (q = 11, 19, both 3 mod 4) for 12 and 20;
Paley II (q = 13, 1 mod 4) for 28. SmolLM2-135M's sizes: hidden 576 = 12·12·4, intermediate
1536 = 12·128, head_dim 64 = 64.

Convention: ``hadamard_transform(x, factors) == x @ hadamard_matrix(n)`` (row vectors).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

from edgeq.errors import QuantizationError

SPECIAL_SIZES = (12, 20, 28)


def _quadratic_character(q: int) -> list[int]:
    squares = {(i * i) % q for i in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _paley_one(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q ≡ 3 (mod 4): H = I + [[0, 1ᵀ], [-1, Q]], Q the Jacobsthal matrix."""
    chi = _quadratic_character(q)
    s = torch.zeros(q + 1, q + 1)
    s[0, 1:] = 1
    s[1:, 0] = -1
    for i in range(q):
        for j in range(q):
            s[1 + i, 1 + j] = chi[(j - i) % q]
    return torch.eye(q + 1) + s


def _paley_two(q: int) -> torch.Tensor:
    """Order 2(q + 1) for a prime q ≡ 1 (mod 4): C = [[0, 1ᵀ], [1, Q]] with 0 -> [[1, -1], [-1, -1]]
    and ±1 -> ±[[1, 1], [1, -1]]."""
    chi = _quadratic_character(q)
    c = torch.zeros(q + 1, q + 1)
    c[0, 1:] = 1
    c[1:, 0] = 1
    for i in range(q):
        for j in range(q):
            c[1 + i, 1 + j] = chi[(j - i) % q]
    zero_block = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
    one_block = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h = torch.zeros(2 * (q + 1), 2 * (q + 1))
    for i in range(q + 1):
        for j in range(q + 1):
            h[2 * i:2 * i + 2, 2 * j:2 * j + 2] = zero_block if c[i, j] == 0 else c[i, j] * one_block
    return h


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=None)
def _factor_matrix(f: int) -> torch.Tensor:
    """The unnormalized ±1 Hadamard matrix of one factor size."""
    if f == 12:
        return _paley_one(11)
    if f == 20:
        return _paley_one(19)
    if f == 28:
        return _paley_two(13)
    if f >= 1 and f & (f - 1) == 0:
        return _sylvester(f)
    raise QuantizationError(f"no Hadamard factor of size {f}")


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@functools.lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[int, ...]:
    """Factor sizes whose Kronecker product is a Hadamard matrix of order ``n``: as few 12/20/28
    factors as possible, then one power of two (omitted when it is 1)."""
    for count in range(0, 4):
        for combo in itertools.combinations_with_replacement(SPECIAL_SIZES, count):
            special = math.prod(combo)
            if n % special == 0 and _is_power_of_two(n // special):
                rest = n // special
                return tuple(combo) + ((rest,) if rest > 1 or not combo else ())
    raise QuantizationError(
        f"no Hadamard matrix of size {n}: sizes must be 2^k times a product of {SPECIAL_SIZES}"
    )


def hadamard_matrix(n: int, dtype=torch.float32) -> torch.Tensor:
    """The normalized (orthogonal) Hadamard matrix of order ``n`` from :func:`hadamard_factors`."""
    h = torch.ones(1, 1, dtype=torch.float64)
    for f in hadamard_factors(n):
        h = torch.kron(h, _factor_matrix(f).double())
    return (h / math.sqrt(n)).to(dtype)


def hadamard_transform(x: torch.Tensor, factors: tuple[int, ...] | None = None) -> torch.Tensor:
    """``x @ hadamard_matrix(n)`` over the last axis, one small factor at a time."""
    n = x.shape[-1]
    factors = tuple(factors) if factors is not None else hadamard_factors(n)
    if math.prod(factors) != n:
        raise QuantizationError(f"Hadamard factors {factors} do not multiply to the axis size {n}")
    lead = x.shape[:-1]
    y = x.reshape(*lead, *factors)
    for axis, f in enumerate(factors):
        h = _factor_matrix(f).to(device=x.device, dtype=x.dtype)
        dim = len(lead) + axis
        y = torch.movedim(torch.movedim(y, dim, -1) @ h, -1, dim)
    return (y / math.sqrt(n)).reshape(*lead, n)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """±1 vector from a seeded generator (randomizes the Hadamard: Q = diag(s) H)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


def random_hadamard_matrix(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Orthogonal ``diag(s) · H_n`` with random signs ``s``."""
    return (random_signs(n, seed).double().unsqueeze(1) * hadamard_matrix(n, torch.float64)).to(dtype)
