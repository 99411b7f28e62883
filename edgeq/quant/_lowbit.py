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


def gptq_linear(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *, damp: float = 0.01,
                block: int = 128, bias=None) -> WeightOnlyLinear:
    """GPTQ on ``w`` [n, k] with input Hessian ``hessian`` [k, k] (columns in their given order).

    The grid of each group is fixed from the already error-updated columns when the solve reaches
    the group's first column.
    """
    w = w.detach().float().clone()
    n, k = w.shape
    if k % group_size:
        raise QuantizationError(f"group size {group_size} does not divide in_features {k}")
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q_all = torch.zeros(n, k)
    scales = torch.zeros(n, k // group_size)
    zeros = torch.zeros(n, k // group_size)
    qmax = 2**bits - 1
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        for j in range(b1 - b0):
            col = b0 + j
            if col % group_size == 0:
                gi = col // group_size
                s, z = group_grid(torch.cat([wb[:, j:], w[:, b1:]], dim=1)[:, :group_size], bits, group_size)
                scales[:, gi], zeros[:, gi] = s[:, 0], z[:, 0]
            gi = col // group_size
            q = torch.round(wb[:, j] / scales[:, gi] + zeros[:, gi]).clamp(0, qmax)
            q_all[:, col] = q
            deq = (q - zeros[:, gi]) * scales[:, gi]
            d = hinv[col, col]
            e = (wb[:, j] - deq) / d
            wb[:, j:] -= e.unsqueeze(1) * hinv[col, col:b1].unsqueeze(0)
            err[:, j] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return WeightOnlyLinear.from_integers(q_all.to(torch.uint8), scales.half(), zeros.to(torch.uint8), bits, bias)
