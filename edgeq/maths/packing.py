"""Bit packing of unsigned low-bit integers along the last axis, into uint8.

The layout is edgeq's contract with the exported ONNX (``edgeq.LowBitLinear``) and the TVM
kernels that unpack inside the matmul; every stage reads it from here.

* 8 bits: one value per byte.
* 4 bits: two per byte; element ``2i`` in the low nibble, ``2i+1`` in the high nibble.
* 2 bits: four per byte; element ``4i+j`` in bits ``2j..2j+1`` (low bits first).
* 3 bits: eight values in three bytes; the 24-bit little-endian word
  ``w = sum_j q[8i+j] << 3j`` is stored as bytes ``w & 0xff, (w >> 8) & 0xff, w >> 16``.

The last axis must be a multiple of the values per pack unit (2 for 4-bit, 4 for 2-bit, 8 for
3-bit); group sizes used by recipes (32/64/128) always are.
"""

from __future__ import annotations

import torch

from edgeq.errors import QuantizationError

SUPPORTED_BITS = (2, 3, 4, 8)
# (values, bytes) in one pack unit
_UNIT = {8: (1, 1), 4: (2, 1), 2: (4, 1), 3: (8, 3)}
PACK_UNIT_VALUES = {bits: values for bits, (values, _) in _UNIT.items()}  # a packed row holds a multiple of these


def packed_length(k: int, bits: int) -> int:
    """Bytes that ``k`` values of ``bits`` bits take."""
    values, nbytes = _unit(bits)
    if k % values:
        raise QuantizationError(f"{k} values cannot be packed at {bits} bits: need a multiple of {values}")
    return k // values * nbytes


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integers in ``[0, 2**bits)`` (any integer dtype) along the last axis."""
    values, nbytes = _unit(bits)
    k = q.shape[-1]
    packed_length(k, bits)
    q = q.to(torch.int32)
    if bits == 8:
        return q.to(torch.uint8)
    groups = q.reshape(*q.shape[:-1], k // values, values)
    word = _or_fields(groups, bits)
    if nbytes == 1:
        return word.to(torch.uint8).reshape(*q.shape[:-1], k // values)
    byte_shifts = torch.arange(nbytes, dtype=torch.int32) * 8
    out = (word.unsqueeze(-1) >> byte_shifts) & 0xFF
    return out.to(torch.uint8).reshape(*q.shape[:-1], k // values * nbytes)


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 ``[..., packed_length(k, bits)]`` -> uint8 ``[..., k]``."""
    values, nbytes = _unit(bits)
    if packed.shape[-1] != packed_length(k, bits):
        raise QuantizationError(
            f"packed axis has {packed.shape[-1]} bytes, expected {packed_length(k, bits)} for {k} values at {bits} bits"
        )
    p = packed.to(torch.int32)
    if bits == 8:
        return p.to(torch.uint8)
    word = _or_fields(p.reshape(*p.shape[:-1], k // values, nbytes), 8)
    shifts = torch.arange(values, dtype=torch.int32) * bits
    q = (word.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return q.to(torch.uint8).reshape(*p.shape[:-1], k)


def _or_fields(fields: torch.Tensor, width: int) -> torch.Tensor:
    """``sum_j fields[..., j] << (width * j)`` for int32 fields narrower than ``width`` bits (disjoint
    bit fields, so the sum is a bitwise or), one slice at a time: a torch sum over a last axis of
    2-8 elements took 3-20x longer, and packing runs on every weight of an LLM's export and compile."""
    word = fields[..., 0]
    for j in range(1, fields.shape[-1]):
        word = word | (fields[..., j] << (width * j))
    return word


def _unit(bits: int) -> tuple[int, int]:
    if bits not in _UNIT:
        raise QuantizationError(f"{bits}-bit packing is not supported; choose one of {SUPPORTED_BITS}")
    return _UNIT[bits]
