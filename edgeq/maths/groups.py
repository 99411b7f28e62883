"""Round-to-nearest group-wise weight quantization: the grid every weight-only method shares.

For each output row and each group of ``group_size`` consecutive input columns:

* asymmetric: ``lo = min(w, 0)``, ``hi = max(w, 0)`` (times the clip ratio),
  ``scale = (hi - lo) / (2**bits - 1)``, ``zero = round(-lo / scale)``;
* symmetric: ``scale = 2 * max|w| / (2**bits - 1)`` (times the clip ratio), ``zero = 2**(bits-1)``;
* ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)``, ``w ≈ (q - zero) * scale``.

The scale is rounded to its storage dtype (float16) *before* ``zero`` and ``q`` are chosen, so
the stored scale is the one the integers were fitted to. With a clip search each group picks,
from a grid of ratios, the one with the least squared error (optionally weighted per input
column, e.g. by the activation energy). GPTQ (``edgeq.quant.gptq``) and the low-rank methods
reuse :func:`group_params` and :func:`quantize_groups`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeq.errors import QuantizationError
from edgeq.maths.packing import PACK_UNIT_VALUES, SUPPORTED_BITS, unpack

MIN_SCALE = 2.0 ** -20  # keeps float16 scales normal-ish and nonzero for all-zero groups


@dataclass
class GroupQuant:
    """Unpacked result: ``q`` uint8 [out, in], ``scales`` [out, groups] in the storage dtype,
    ``zeros`` uint8 [out, groups]."""

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        return dequantize_groups(self.q, self.scales, self.zeros, self.group_size)


def check_grid(bits: int, group_size: int, in_features: int, layer: str = "weight") -> None:
    if bits not in SUPPORTED_BITS:
        raise QuantizationError(f"{layer}: {bits}-bit weights are not supported; choose one of {SUPPORTED_BITS}")
    if group_size <= 0 or in_features % group_size:
        raise QuantizationError(
            f"{layer}: group size {group_size} does not divide its {in_features} input features"
        )
    if group_size % PACK_UNIT_VALUES[bits]:  # each group's packed bytes are its own (the kernels index them so)
        raise QuantizationError(
            f"{layer}: {bits}-bit values in groups of {group_size} do not fill whole bytes (its {in_features} input "
            f"features; groups must be a multiple of {PACK_UNIT_VALUES[bits]}): keep it in float with skip=[{layer!r}]"
        )


def resolve_group_size(group_size: int | None, in_features: int, fallback: bool = False, layer: str = "weight") -> int:
    """The group size used for a layer: ``in_features`` for None (per channel); with
    ``fallback``, a size that does not divide ``in_features`` is replaced by the largest power
    of two below it (at least 8) that does -- e.g. 128 -> 64 on SmolLM2's 576-wide inputs."""
    if group_size is None:
        return in_features
    if in_features % group_size and fallback:
        g = 1 << (group_size.bit_length() - 1)
        while g >= 8 and in_features % g:
            g //= 2
        if g >= 8:
            return g
    if group_size <= 0 or in_features % group_size:
        raise QuantizationError(f"{layer}: group size {group_size} does not divide its {in_features} input features")
    return group_size


def group_params(w: torch.Tensor, bits: int, symmetric: bool, clip: torch.Tensor | float = 1.0,
                 scale_dtype=torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) for groups ``w`` [..., g] -> each [...]: scale already rounded to
    ``scale_dtype`` (returned in float32), zero an integer-valued float32."""
    maxq = 2 ** bits - 1
    w = w.float()
    if symmetric:
        scale = 2 * w.abs().amax(dim=-1) * clip / maxq
    else:
        lo = w.amin(dim=-1).clamp(max=0) * clip
        hi = w.amax(dim=-1).clamp(min=0) * clip
        scale = (hi - lo) / maxq
    scale = scale.clamp(min=MIN_SCALE).to(scale_dtype).float()
    if symmetric:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers for ``w`` [..., g] on the grid (scale, zero) [...] -> float tensor of q values."""
    return torch.clamp(torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, 2 ** bits - 1)


def clip_ratios(steps: int, lowest: float = 0.5) -> torch.Tensor:
    return torch.linspace(1.0, lowest, steps)


def search_group_params(w: torch.Tensor, bits: int, symmetric: bool, ratios: torch.Tensor,
                        col_weight: torch.Tensor | None = None, scale_dtype=torch.float16):
    """Per group, the clip ratio in ``ratios`` with the least (column-weighted) squared error."""
    best_err = torch.full(w.shape[:-1], float("inf"))
    best_scale = best_zero = None
    for r in ratios.tolist():
        scale, zero = group_params(w, bits, symmetric, r, scale_dtype)
        deq = (quantize_with(w, scale, zero, bits) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
        err = (deq - w).pow(2)
        if col_weight is not None:
            err = err * col_weight
        err = err.sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        best_zero = zero if best_zero is None else torch.where(better, zero, best_zero)
    return best_scale, best_zero


def quantize_groups(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool = False,
                    clip_steps: int = 0, col_weight: torch.Tensor | None = None,
                    scale_dtype=torch.float16, layer: str = "weight") -> GroupQuant:
    """RTN of a 2-D ``weight`` [out, in] in groups along ``in``. ``clip_steps > 1`` searches that
    many clip ratios in [1, 0.5] per group; ``col_weight`` [in] weights the error per column."""
    out_features, in_features = weight.shape
    check_grid(bits, group_size, in_features, layer)
    w = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    if clip_steps > 1:
        cw = None if col_weight is None else col_weight.float().reshape(in_features // group_size, group_size)
        scale, zero = search_group_params(w, bits, symmetric, clip_ratios(clip_steps), cw, scale_dtype)
    else:
        scale, zero = group_params(w, bits, symmetric, 1.0, scale_dtype)
    q = quantize_with(w, scale, zero, bits).reshape(out_features, in_features)
    return GroupQuant(q.to(torch.uint8), scale.to(scale_dtype), zero.to(torch.uint8), bits, group_size)


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(q - zero) * scale`` per group, in float32: ``q`` [..., K] unpacked integers, ``scales`` and
    ``zeros`` [..., K / group_size]. The one dequantize formula of every weight-only format."""
    k = q.shape[-1]
    qg = q.float().reshape(*q.shape[:-1], k // group_size, group_size)
    return ((qg - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)).reshape(*q.shape[:-1], k)


def dequantize_packed(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                      group_size: int) -> torch.Tensor:
    """:func:`dequantize_groups` of packed rows ``[..., P]`` (``edgeq.maths.packing``'s layout)."""
    return dequantize_groups(unpack(packed, bits, packed.shape[-1] * 8 // bits), scales, zeros, group_size)


def symmetric_per_channel(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 tensor with |q| <= 2^(bits-1) - 1, float32 scale per output channel): the one
    symmetric per-channel quantizer (W8A8's int8 weights, the dyadic recipes' 2-8 bit weights).

    Below 8 bits each channel's clipping range is searched (a fraction of max |w| from 0.5 to 1)
    for the smallest squared weight error: at 4 bits the largest weight sets too coarse a step.
    """
    if not 2 <= bits <= 8:
        raise QuantizationError(f"symmetric per-channel weights take 2 to 8 bits, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float().reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1).clamp_min(1e-12)
    ratios = torch.linspace(0.5, 1.0, 51) if bits < 8 else torch.ones(1)
    best_err = torch.full_like(amax, float("inf"))
    best_scale = amax / qmax
    for r in ratios:
        scale = (amax * r / qmax).float()
        err = ((torch.round(w / scale[:, None]).clamp(-qmax, qmax) * scale[:, None] - w) ** 2).sum(dim=1)
        better = err < best_err
        best_err, best_scale = torch.where(better, err, best_err), torch.where(better, scale, best_scale)
    q = torch.round(w / best_scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q.reshape(weight.shape), best_scale.float()
