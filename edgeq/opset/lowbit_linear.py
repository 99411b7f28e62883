"""``edgeq.LowBitLinear``: a linear layer with packed 2/3/4/8-bit weights, group-wise scales and
zero points (the ``WeightOnlyLinear`` contract), as one ONNX node.

    W[n, k] = (unpack(QWeight)[n, k] - Zeros[n, k // group_size]) * Scales[n, k // group_size]
    Y = X @ W^T + Bias

The function body unpacks with BitShift/BitwiseAnd, dequantizes and MatMuls, all standard ONNX,
so stock onnxruntime runs it; compilers that know the op keep the weights packed.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import values

from edgeq.maths.groups import dequantize_packed
from edgeq.opset._function import FunctionBuilder, dequantize_groups, unpack_weights
from edgeq.opset.registry import DOMAIN, OPSET_VERSION, EdgeqOp, register_op, register_translation

FLOATS = ["tensor(float)", "tensor(float16)"]

# The packed weight as LowBitLinear takes it; ops that add to LowBitLinear (LowRankLinear) take
# these inputs first and these attributes.
PACKED_WEIGHT_INPUTS = [
    OpSchema.FormalParameter("X", "T", "activations [..., K]"),
    OpSchema.FormalParameter("QWeight", "tensor(uint8)", "packed unsigned weights [N, packed_length(K, bits)], packed along K"),
    OpSchema.FormalParameter("Scales", "S", "group scales [N, K / group_size]"),
    OpSchema.FormalParameter("Zeros", "tensor(uint8)", "group zero points [N, K / group_size], unsigned"),
]
PACKED_WEIGHT_ATTRIBUTES = [
    OpSchema.Attribute("bits", OpSchema.AttrType.INT, "weight bits: 2, 3, 4 or 8"),
    OpSchema.Attribute("group_size", OpSchema.AttrType.INT, "weights per scale along K (K for per-channel)"),
]
BIAS_INPUT = OpSchema.FormalParameter("Bias", "T", "bias [N]", param_option=OpSchema.FormalParameterOption.Optional)

SCHEMA = OpSchema(
    "LowBitLinear", DOMAIN, OPSET_VERSION,
    doc="Y = X @ dequant(QWeight)^T + Bias with packed low-bit weights and group-wise scales and zero points.",
    inputs=[*PACKED_WEIGHT_INPUTS, BIAS_INPUT],
    outputs=[OpSchema.FormalParameter("Y", "T", "[..., N], X's type")],
    type_constraints=[("T", FLOATS, "activation type"), ("S", FLOATS, "scale type")],
    attributes=PACKED_WEIGHT_ATTRIBUTES,
)

DOC = """\
Packing (along K, unsigned values in [0, 2^bits)): 8 bits one per byte; 4 bits two per byte,
element 2i in the low nibble; 2 bits four per byte, element 4i+j in bits 2j..2j+1; 3 bits eight
values in three bytes, the little-endian 24-bit word w = sum_j q[8i+j] << 3j.
Symmetric recipes store Zeros = 2^(bits-1). The function body computes in X's type.
"""


def function(attrs: dict, opset: int) -> onnx.FunctionProto:
    bits, group_size = int(attrs["bits"]), int(attrs["group_size"])
    has_bias = attrs.get("num_inputs", 5) >= 5
    inputs = ["X", "QWeight", "Scales", "Zeros"] + (["Bias"] if has_bias else [])
    b = FunctionBuilder("LowBitLinear", inputs, ["Y"], ["bits", "group_size"], opset)
    y = dequantized_matmul(b, bits, group_size, out=None if has_bias else "Y")
    if has_bias:
        b.op("Add", y, "Bias", out="Y")
    return b.build()


def dequantized_matmul(b: FunctionBuilder, bits: int, group_size: int, out: str | None = None) -> str:
    """``X @ dequant(QWeight, Scales, Zeros)^T`` in the function body ``b`` is building."""
    w = dequantize_groups(b, unpack_weights(b, "QWeight", bits), "Scales", "Zeros", group_size, like="X")
    return b.op("MatMul", "X", b.op("Transpose", w, perm=[1, 0]), out=out)


def reference(x, qweight, scales, zeros, bias=None, *, bits: int, group_size: int) -> np.ndarray:
    w = dequantize_packed(*(torch.from_numpy(np.ascontiguousarray(t)) for t in (qweight, scales, zeros)), bits,
                          group_size).numpy()
    y = x.astype(np.float32) @ w.T
    if bias is not None:
        y = y + bias.astype(np.float32)
    return y.astype(x.dtype)


OP = register_op(EdgeqOp("LowBitLinear", SCHEMA, function, reference, DOC))


@torch.library.custom_op("edgeq::lowbit_linear", mutates_args=())
def lowbit_linear(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
    bias: torch.Tensor | None, bits: int, group_size: int,
) -> torch.Tensor:
    w = dequantize_packed(qweight, scales, zeros, bits, group_size).to(x.dtype)
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


@lowbit_linear.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


_EDGEQ = values.Opset(DOMAIN, OPSET_VERSION)


def _onnx_lowbit_linear(x, qweight, scales, zeros, bias=None, bits: int = 4, group_size: int = 128):
    if bias is None:
        return _EDGEQ.LowBitLinear(x, qweight, scales, zeros, bits=bits, group_size=group_size)
    return _EDGEQ.LowBitLinear(x, qweight, scales, zeros, bias, bits=bits, group_size=group_size)


register_translation(torch.ops.edgeq.lowbit_linear.default, _onnx_lowbit_linear)
