"""R1SVD: a low-rank decomposition built one rank-1 component at a time.

Each component starts from a Gaussian sketch ``y = R g`` of the current residual
``R = W - U V`` (deflation is implicit: ``R x = W x - U (V x)``, so ``R`` is never formed), then a
few power iterations ``y <- R R^T y`` sharpen it towards the top singular direction of ``R``;
``u = y / |y|``, ``v = R^T u`` (so ``|v|`` estimates the singular value). Every step is a
matrix-vector product, so a rank-r factorisation costs about ``r * (2 * power_iters + 3)``
passes over ``W`` instead of the ``O(min(m, n)^2 max(m, n))`` of a full SVD.

The rank is adaptive: components are added until ``max_rank``, or until the relative energy a
component captures (``|v|^2 / |W|_F^2``) falls under ``energy_tol``, or, when ``residual_error``
is given (e.g. the quantization error of the residual), until that error stops improving by
``rel_improvement``.

Factors can be kept in float16/bfloat16 or in int8 with one symmetric scale per rank component
(:func:`compress_factors`); their bytes are what bits-per-weight accounting adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgeq.errors import QuantizationError

FACTOR_DTYPES = ("float32", "float16", "bfloat16", "int8")


@dataclass
class LowRank:
    """``W ≈ u @ v`` with ``u`` [m, r] and ``v`` [r, n] (float32)."""

    u: torch.Tensor
    v: torch.Tensor

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def matrix(self) -> torch.Tensor:
        return self.u @ self.v


def r1svd(
    w: torch.Tensor,
    max_rank: int,
    *,
    power_iters: int = 2,
    energy_tol: float = 0.0,
    residual_error: Callable[[torch.Tensor], float] | None = None,
    rel_improvement: float = 0.01,
    seed: int = 0,
) -> LowRank:
    """Rank-``<= max_rank`` factors of ``w`` [m, n] by rank-1 Gaussian sketches with deflation.

    ``residual_error(R)`` (optional) scores a candidate residual, e.g. the error of quantizing
    it; the rank stops growing when a component improves it by less than ``rel_improvement``
    (relative), and that last component is dropped.
    """
    if w.dim() != 2:
        raise QuantizationError(f"r1svd needs a 2-D matrix, got shape {tuple(w.shape)}")
    if max_rank < 0:
        raise QuantizationError(f"r1svd max_rank must be >= 0, got {max_rank}")
    w = w.detach().float()
    m, n = w.shape
    max_rank = min(max_rank, m, n)
    gen = torch.Generator().manual_seed(seed)
    us = torch.zeros(m, max_rank)
    vs = torch.zeros(max_rank, n)
    total = float(w.square().sum()) or 1.0
    best = residual_error(w) if residual_error is not None else None
    r = 0
    while r < max_rank:
        u_k, v_k = us[:, :r], vs[:r]

        def apply(x):  # R x
            return w @ x - u_k @ (v_k @ x)

        def apply_t(y):  # R^T y
            return w.T @ y - v_k.T @ (u_k.T @ y)

        y = apply(torch.randn(n, generator=gen))
        for _ in range(power_iters):
            y = apply(apply_t(y / (y.norm() + 1e-30)))
        u = y / (y.norm() + 1e-30)
        v = apply_t(u)
        energy = float(v.square().sum()) / total
        if energy <= energy_tol:
            break
        us[:, r], vs[r] = u, v
        if residual_error is not None:
            err = residual_error(w - us[:, : r + 1] @ vs[: r + 1])
            if err > best * (1.0 - rel_improvement):
                us[:, r], vs[r] = 0.0, 0.0
                break
            best = err
        r += 1
    # Balance the factors (both carry sqrt(sigma)) so that low-precision storage treats them alike.
    sigma = vs[:r].norm(dim=1).clamp_min(1e-30)
    root = sigma.sqrt()
    return LowRank(us[:, :r] * root, vs[:r] / sigma.unsqueeze(1) * root.unsqueeze(1))


def compress_factors(lr: LowRank, dtype: str) -> tuple[dict[str, torch.Tensor], LowRank]:
    """Store factors in ``dtype`` ("float32", "float16", "bfloat16" or "int8").

    Returns (buffers to keep, the factors they decode to). int8 keeps one symmetric scale per
    rank component for each factor: ``u = u_int8 * u_scale`` (column-wise), ``v = v_int8 *
    v_scale[:, None]`` (row-wise); scales are float16.
    """
    if dtype not in FACTOR_DTYPES:
        raise QuantizationError(f"unknown low-rank factor dtype {dtype!r}; choose one of {FACTOR_DTYPES}")
    if dtype != "int8":
        t = getattr(torch, dtype)
        buffers = {"u": lr.u.to(t).contiguous(), "v": lr.v.to(t).contiguous()}
        return buffers, LowRank(buffers["u"].float(), buffers["v"].float())
    u_scale = (lr.u.abs().amax(dim=0) / 127).clamp_min(1e-8).half()
    v_scale = (lr.v.abs().amax(dim=1) / 127).clamp_min(1e-8).half()
    u_q = torch.round(lr.u / u_scale.float()).clamp(-127, 127).to(torch.int8)
    v_q = torch.round(lr.v / v_scale.float().unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    buffers = {"u": u_q, "v": v_q, "u_scale": u_scale, "v_scale": v_scale}
    return buffers, decode_factors(buffers)


def decode_factors(buffers: dict[str, torch.Tensor]) -> LowRank:
    """The float32 factors that :func:`compress_factors` buffers stand for."""
    u, v = buffers["u"].float(), buffers["v"].float()
    if buffers.get("u_scale") is not None:
        u = u * buffers["u_scale"].float()
        v = v * buffers["v_scale"].float().unsqueeze(1)
    return LowRank(u, v)


def factor_bytes(buffers: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in buffers.values() if t is not None)


class LowRankTwin(nn.Module):
    """Base of the export twins of layers with a low-rank branch (``u``, ``v`` and their scales):
    holds the layer and buffers ``factor_in`` [in, r], ``factor_out`` [r, out] with
    ``x @ factor_in @ factor_out`` the branch. float16 factors stay float16 (exact in the op's
    cast); others (bf16, int8 with scales) are decoded to float32."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        lr = decode_factors({"u": layer.u, "v": layer.v, "u_scale": layer.u_scale, "v_scale": layer.v_scale})
        dtype = torch.float16 if layer.u.dtype == torch.float16 and layer.u_scale is None else torch.float32
        self.register_buffer("factor_in", lr.v.T.contiguous().to(dtype))
        self.register_buffer("factor_out", lr.u.T.contiguous().to(dtype))


FACTOR_NAMES = ("u", "v", "u_scale", "v_scale")


def factors_spec(layer) -> dict:
    """Shapes and dtypes of a layer's factor buffers (None where absent), for a saved model."""
    spec = {}
    for name in FACTOR_NAMES:
        t = getattr(layer, name)
        spec[name] = None if t is None else {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    return spec


def empty_factors(spec: dict) -> dict[str, torch.Tensor]:
    """Zero buffers of the shapes and dtypes :func:`factors_spec` recorded."""
    return {name: torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for name, s in spec.items() if s is not None}
