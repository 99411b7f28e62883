"""Lookup in a packed low-bit embedding table (``WeightOnlyEmbedding``), exported as standard
ONNX: Gather the packed rows, their scales and zero points, then unpack with BitShift/BitwiseAnd
and dequantize. The table stays packed in the file (and can be shared with a tied ``lm_head``
``LowBitLinear``). ``dequantize_packed`` is the same over every row (a weight-only conv weight).

``dequantize_packed`` exports as a placeholder node that ``edgeq.export`` expands after the
exporter's optimizer has run: its constant folding would otherwise store the weight as float."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import ir, values
from onnxscript import opset21 as op

from edgeq.maths import groups
from edgeq.opset.registry import register_translation


@torch.library.custom_op("edgeq::lowbit_embedding", mutates_args=())
def lowbit_embedding(ids: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    return groups.dequantize_packed(qweight[ids], scales[ids], zeros[ids], bits, group_size)


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


@torch.library.custom_op("edgeq::dequantize_packed", mutates_args=())
def dequantize_packed(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The whole packed table ``[N, P]`` dequantized to float32 ``[N, K]`` (a conv weight)."""
    return groups.dequantize_packed(qweight, scales, zeros, bits, group_size)


@dequantize_packed.register_fake
def _(qweight, scales, zeros, bits, group_size):
    return torch.empty(qweight.shape[0], qweight.shape[1] * 8 // bits, dtype=torch.float32, device=qweight.device)


# A placeholder node the exporter's constant folding cannot evaluate; ``edgeq.export`` replaces it
# by standard ops afterwards (``expand_packed_weights``).
PLACEHOLDER_DOMAIN = "edgeq.export"
_PLACEHOLDER = values.Opset(PLACEHOLDER_DOMAIN, 1)
onnx.defs.register_schema(OpSchema(
    "PackedWeight", PLACEHOLDER_DOMAIN, 1, doc="export-time placeholder: a packed weight dequantized",
    inputs=[OpSchema.FormalParameter("QWeight", "tensor(uint8)"), OpSchema.FormalParameter("Scales", "S"),
            OpSchema.FormalParameter("Zeros", "tensor(uint8)")],
    outputs=[OpSchema.FormalParameter("W", "tensor(float)")],
    type_constraints=[("S", ["tensor(float)", "tensor(float16)"], "scale type")],
    attributes=[OpSchema.Attribute("bits", OpSchema.AttrType.INT, ""), OpSchema.Attribute("group_size", OpSchema.AttrType.INT, "")],
))


def _onnx_dequantize_packed(qweight, scales, zeros, bits: int = 4, group_size: int = 128):
    return _PLACEHOLDER.PackedWeight(qweight, scales, zeros, bits=bits, group_size=group_size)


register_translation(torch.ops.edgeq.dequantize_packed.default, _onnx_dequantize_packed)
