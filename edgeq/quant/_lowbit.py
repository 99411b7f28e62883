"""Group-wise min/max RTN into a :class:`WeightOnlyLinear`, and a GPTQ solve for one matrix.

The low-rank methods need a base quantizer for the matrix they leave after taking out the
low-rank part. These are the plain textbook forms (asymmetric min/max grid, scales rounded to
float16 before the integers are chosen; GPTQ with damping and lazy column updates), kept here
so the low-rank methods stand on their own.
"""

from __future__ import annotations

import torch

from edgeq.errors import QuantizationError
from edgeq.quant.weight_only import WeightOnlyLinear


def group_grid(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max (scales float16-rounded, zeros integer) per group of ``group_size`` along k."""
    n, k = w.shape
    if k % group_size:
        raise QuantizationError(f"group size {group_size} does not divide in_features {k}")
    g = w.reshape(n, k // group_size, group_size)
    lo = g.amin(dim=-1).clamp(max=0)
    hi = g.amax(dim=-1).clamp(min=0)
    qmax = 2**bits - 1
    scales = ((hi - lo) / qmax).clamp_min(1e-8).half().float().clamp_min(6.2e-5)
    zeros = torch.round(-lo / scales).clamp(0, qmax)
    return scales, zeros


def quantize_to_grid(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers for ``w`` on the given per-group grid (groups inferred from ``scales``' width)."""
    n, k = w.shape
    gs = k // scales.shape[1]
    s = scales.repeat_interleave(gs, dim=1)
    z = zeros.repeat_interleave(gs, dim=1)
    return torch.round(w / s + z).clamp(0, 2**bits - 1)


def rtn_linear(w: torch.Tensor, bits: int, group_size: int, bias=None) -> WeightOnlyLinear:
    w = w.detach().float()
    scales, zeros = group_grid(w, bits, group_size)
    q = quantize_to_grid(w, scales, zeros, bits)
    return WeightOnlyLinear.from_integers(q.to(torch.uint8), scales.half(), zeros.to(torch.uint8), bits, bias)


def gptq_solve(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *, n_quant: int | None = None,
               damp: float = 0.01, block: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on ``w`` [n, k] with input Hessian ``hessian`` [k, k], columns in their given order.

    Only the first ``n_quant`` columns (default all) are quantized; the columns after them are
    left in float but still receive the error updates, so they absorb what quantization lost.
    Returns (integers [n, n_quant], scales, zeros [n, n_quant/group], updated trailing columns).
    The grid of each group is fixed when the solve reaches the group's first column.
    """
    w = w.detach().float().clone()
    n, k = w.shape
    n_quant = k if n_quant is None else n_quant
    if n_quant % group_size:
        raise QuantizationError(f"group size {group_size} does not divide in_features {n_quant}")
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q_all = torch.zeros(n, n_quant)
    scales = torch.zeros(n, n_quant // group_size)
    zeros = torch.zeros(n, n_quant // group_size)
    qmax = 2**bits - 1
    for b0 in range(0, n_quant, block):
        b1 = min(b0 + block, n_quant)
        for j in range(b0, b1):
            gi = j // group_size
            if j % group_size == 0:
                s, z = group_grid(w[:, j:j + group_size], bits, group_size)
                scales[:, gi], zeros[:, gi] = s[:, 0], z[:, 0]
            q = torch.round(w[:, j] / scales[:, gi] + zeros[:, gi]).clamp(0, qmax)
            q_all[:, j] = q
            e = (w[:, j] - (q - zeros[:, gi]) * scales[:, gi]) / hinv[j, j]
            w[:, j:b1] -= e.unsqueeze(1) * hinv[j, j:b1].unsqueeze(0)
            w[:, j] = e  # keep the scaled error of column j for the lazy update below
        w[:, b1:] -= w[:, b0:b1] @ hinv[b0:b1, b1:]
    return q_all, scales, zeros, w[:, n_quant:]


def gptq_linear(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *, damp: float = 0.01,
                bias=None) -> WeightOnlyLinear:
    q, scales, zeros, _ = gptq_solve(w, hessian, bits, group_size, damp=damp)
    return WeightOnlyLinear.from_integers(q.to(torch.uint8), scales.half(), zeros.to(torch.uint8), bits, bias)
