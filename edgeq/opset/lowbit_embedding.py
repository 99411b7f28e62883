"""Lookup in a packed low-bit embedding table (``WeightOnlyEmbedding``), exported as standard
ONNX: Gather the packed rows, their scales and zero points, then unpack with BitShift/BitwiseAnd
and dequantize. The table stays packed in the file (and can be shared with a tied ``lm_head``
``LowBitLinear``)."""

from __future__ import annotations

import numpy as np
import torch
from onnxscript import ir
from onnxscript import opset21 as op

from edgeq.opset import register_translation
from edgeq.quant.embedding import lookup


@torch.library.custom_op("edgeq::lowbit_embedding", mutates_args=())
def lowbit_embedding(ids: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    return lookup(qweight[ids], scales[ids], zeros[ids], bits, group_size)


@lowbit_embedding.register_fake
def _(ids, qweight, scales, zeros, bits, group_size):
    return torch.empty(*ids.shape, qweight.shape[1] * 8 // bits, dtype=torch.float32, device=ids.device)


def _const(array: np.ndarray):
    return op.Constant(value=ir.tensor(array))


def _onnx_lowbit_embedding(ids, qweight, scales, zeros, bits: int = 4, group_size: int = 128):
    rows = op.Gather(qweight, ids, axis=0)
    if bits == 8:
        q = rows
    elif bits in (2, 4):
        fields = op.BitShift(op.Unsqueeze(rows, _const(np.array([-1], np.int64))), _const(np.arange(0, 8, bits, dtype=np.uint8)), direction="RIGHT")
        q = op.BitwiseAnd(fields, _const(np.array((1 << bits) - 1, np.uint8)))
    else:  # 3 bits: eight values in a little-endian 24-bit word of three bytes
        units = op.Cast(op.Reshape(rows, op.Concat(op.Shape(ids), _const(np.array([-1, 3], np.int64)), axis=0)), to=ir.DataType.UINT32)
        placed = op.BitShift(units, _const(np.array([0, 8, 16], np.uint32)), direction="LEFT")
        lo, mid, hi = op.Split(placed, axis=-1, num_outputs=3)
        fields = op.BitShift(op.BitwiseOr(op.BitwiseOr(lo, mid), hi), _const(np.arange(0, 24, 3, dtype=np.uint32)), direction="RIGHT")
        q = op.BitwiseAnd(fields, _const(np.array(7, np.uint32)))
    grouped_shape = op.Concat(op.Shape(ids), _const(np.array([-1, group_size], np.int64)), axis=0)
    qg = op.Reshape(op.Cast(q, to=ir.DataType.FLOAT), grouped_shape)
    axis = _const(np.array([-1], np.int64))
    z = op.Unsqueeze(op.Cast(op.Gather(zeros, ids, axis=0), to=ir.DataType.FLOAT), axis)
    s = op.Unsqueeze(op.Cast(op.Gather(scales, ids, axis=0), to=ir.DataType.FLOAT), axis)
    flat_shape = op.Concat(op.Shape(ids), _const(np.array([-1], np.int64)), axis=0)
    return op.Reshape(op.Mul(op.Sub(qg, z), s), flat_shape)


register_translation(torch.ops.edgeq.lowbit_embedding.default, _onnx_lowbit_embedding)
