"""QuantizeLinear / DequantizeLinear with ONNX's exact arithmetic.

torch's ``quantized_decomposed`` ops multiply by ``1/scale`` where ONNX divides by ``scale``;
near a rounding tie the two pick different integers. These ops compute what the ONNX spec says,
so the PyTorch reference, onnxruntime and TVM agree:

    quantize:   q = saturate(round_half_even(x / scale) + zero_point)
    dequantize: y = (q - zero_point) * scale

``scale``/``zero_point`` are per tensor (0-d) or per channel along ``axis``; the output dtype of
quantize is the zero point's dtype (uint8, int8, int32).
"""

from __future__ import annotations

import torch
from onnxscript import opset21 as op

from edgeq.opset.registry import register_translation

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def _broadcast(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    if t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


@torch.library.custom_op("edgeq::quantize_linear", mutates_args=())
def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int = 1) -> torch.Tensor:
    lo, hi = _RANGES[zero_point.dtype]
    s = _broadcast(scale, x.dim(), axis)
    z = _broadcast(zero_point, x.dim(), axis).to(torch.float32)
    return torch.clamp(torch.round(x / s) + z, lo, hi).to(zero_point.dtype)


@quantize_linear.register_fake
def _(x, scale, zero_point, axis=1):
    return torch.empty_like(x, dtype=zero_point.dtype)


@torch.library.custom_op("edgeq::dequantize_linear", mutates_args=())
def dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int = 1) -> torch.Tensor:
    s = _broadcast(scale, q.dim(), axis)
    z = _broadcast(zero_point, q.dim(), axis)
    return (q.to(torch.float32) - z.to(torch.float32)) * s


@dequantize_linear.register_fake
def _(q, scale, zero_point, axis=1):
    return torch.empty_like(q, dtype=torch.float32)


def _onnx_quantize_linear(x, scale, zero_point, axis: int = 1):
    return op.QuantizeLinear(x, scale, zero_point, axis=axis)


def _onnx_dequantize_linear(q, scale, zero_point, axis: int = 1):
    return op.DequantizeLinear(q, scale, zero_point, axis=axis)


register_translation(torch.ops.edgeq.quantize_linear.default, _onnx_quantize_linear)
register_translation(torch.ops.edgeq.dequantize_linear.default, _onnx_dequantize_linear)
