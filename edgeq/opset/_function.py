"""A small builder for the flat FunctionProto bodies of ``edgeq`` ops.

Bodies use standard ONNX ops only, so that stock onnxruntime (which inlines model-local
functions) runs a file with no plugin. Constants are ``Constant(value=...)`` nodes: TVM's importer
reads no other Constant attribute.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.opset.registry import DOMAIN


class FunctionBuilder:
    """Collects nodes with unique intermediate names; ``build`` makes the FunctionProto."""

    def __init__(self, name: str, inputs: list[str], outputs: list[str], attributes: list[str], opset: int):
        self.name, self.inputs, self.outputs, self.attributes, self.opset = name, inputs, outputs, attributes, opset
        self.nodes: list[onnx.NodeProto] = []
        self._ids = itertools.count()

    def const(self, value, dtype) -> str:
        out = f"_c{next(self._ids)}"
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(value, dtype=dtype))))
        return out

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or f"_t{next(self._ids)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def build(self) -> onnx.FunctionProto:
        return helper.make_function(
            DOMAIN, self.name, self.inputs, self.outputs, self.nodes,
            [helper.make_opsetid("", self.opset)], attributes=self.attributes,
        )


def unpack_weights(b: FunctionBuilder, packed: str, bits: int) -> str:
    """uint8 ``[N, P]`` packed as in ``edgeq.maths.packing`` -> integer ``[N, K]`` (uint8 or uint32)."""
    if bits == 8:
        return packed
    if bits in (2, 4):
        shifts = b.const(np.arange(0, 8, bits), np.uint8)
        fields = b.op("BitShift", b.op("Unsqueeze", packed, b.const([-1], np.int64)), shifts, direction="RIGHT")
        values = b.op("BitwiseAnd", fields, b.const((1 << bits) - 1, np.uint8))
        return b.op("Reshape", values, b.const([0, -1], np.int64))
    if bits == 3:
        units = b.op("Cast", b.op("Reshape", packed, b.const([0, -1, 3], np.int64)), to=onnx.TensorProto.UINT32)
        placed = b.op("BitShift", units, b.const([0, 8, 16], np.uint32), direction="LEFT")
        lo, mid, hi = (f"_t{next(b._ids)}" for _ in range(3))
        b.nodes.append(helper.make_node("Split", [placed], [lo, mid, hi], axis=-1, num_outputs=3))
        word = b.op("BitwiseOr", b.op("BitwiseOr", lo, mid), hi)  # [N, K/8, 1]
        fields = b.op("BitShift", word, b.const(np.arange(0, 24, 3), np.uint32), direction="RIGHT")
        values = b.op("BitwiseAnd", fields, b.const(7, np.uint32))
        return b.op("Reshape", values, b.const([0, -1], np.int64))
    raise ValueError(f"no unpacking for {bits} bits")


def dequantize_groups(b: FunctionBuilder, q: str, scales: str, zeros: str, group_size: int, like: str) -> str:
    """``(q - zeros) * scales`` group-wise along K, in ``like``'s float type: ``[N, K]``."""
    axis = b.const([-1], np.int64)
    qg = b.op("Reshape", b.op("CastLike", q, like), b.const([0, -1, group_size], np.int64))
    z = b.op("Unsqueeze", b.op("CastLike", zeros, like), axis)
    s = b.op("Unsqueeze", b.op("CastLike", scales, like), axis)
    return b.op("Reshape", b.op("Mul", b.op("Sub", qg, z), s), b.const([0, -1], np.int64))
