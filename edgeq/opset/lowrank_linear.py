"""``edgeq.LowRankLinear``: a low-bit linear layer fused with its low-rank correction, the
inference form of LoPRo and LRQMM (W ~ dequant(Q) + (U V)^T):

    Y = X @ dequant(QWeight)^T + (X @ U) @ V + Bias

``QWeight``/``Scales``/``Zeros`` follow ``edgeq.LowBitLinear``; ``U`` is ``[K, rank]`` and ``V``
``[rank, N]`` (float32 or float16). The branch costs ``rank * (K + N)`` multiply-adds per row, so it
stays a thin pair of MatMuls rather than being folded into the dense weight.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import values

from edgeq.opset._function import FunctionBuilder
from edgeq.opset.lowbit_linear import (
    BIAS_INPUT,
    FLOATS,
    PACKED_WEIGHT_ATTRIBUTES,
    PACKED_WEIGHT_INPUTS,
    dequantized_matmul,
    lowbit_linear,
)
from edgeq.opset.registry import DOMAIN, OPSET_VERSION, EdgeqOp, register_op, register_translation
from edgeq.opset.lowbit_linear import reference as lowbit_reference

SCHEMA = OpSchema(
    "LowRankLinear", DOMAIN, OPSET_VERSION,
    doc="Y = X @ dequant(QWeight)^T + (X @ U) @ V + Bias: LowBitLinear plus a low-rank branch.",
    inputs=[
        *PACKED_WEIGHT_INPUTS,
        OpSchema.FormalParameter("U", "F", "low-rank factor [K, rank]"),
        OpSchema.FormalParameter("V", "F", "low-rank factor [rank, N]"),
        BIAS_INPUT,
    ],
    outputs=[OpSchema.FormalParameter("Y", "T", "[..., N], X's type")],
    type_constraints=[("T", FLOATS, "activation type"), ("S", FLOATS, "scale type"), ("F", FLOATS, "factor type")],
    attributes=PACKED_WEIGHT_ATTRIBUTES,
)

DOC = """\
The low-bit part is exactly LowBitLinear's. U and V are cast to X's type; the branch is computed
as (X @ U) @ V. Methods that transform the input of the quantized part (LoPRo's permutation and
block Hadamard) export the transform as Gather/Hadamard nodes before this op and carry U in the
transformed basis, so that both branches read the same X.
"""


def function(attrs: dict, opset: int) -> onnx.FunctionProto:
    bits, group_size = int(attrs["bits"]), int(attrs["group_size"])
    has_bias = attrs.get("num_inputs", 7) >= 7
    inputs = ["X", "QWeight", "Scales", "Zeros", "U", "V"] + (["Bias"] if has_bias else [])
    b = FunctionBuilder("LowRankLinear", inputs, ["Y"], ["bits", "group_size"], opset)
    base = dequantized_matmul(b, bits, group_size)
    branch = b.op("MatMul", b.op("MatMul", "X", b.op("CastLike", "U", "X")), b.op("CastLike", "V", "X"))
    y = b.op("Add", base, branch, out=None if has_bias else "Y")
    if has_bias:
        b.op("Add", y, "Bias", out="Y")
    return b.build()


def reference(x, qweight, scales, zeros, u, v, bias=None, *, bits: int, group_size: int) -> np.ndarray:
    y = lowbit_reference(x, qweight, scales, zeros, bias, bits=bits, group_size=group_size).astype(np.float32)
    xf = x.astype(np.float32)
    return (y + (xf @ u.astype(np.float32)) @ v.astype(np.float32)).astype(x.dtype)


OP = register_op(EdgeqOp("LowRankLinear", SCHEMA, function, reference, DOC))


@torch.library.custom_op("edgeq::lowrank_linear", mutates_args=())
def lowrank_linear(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, u: torch.Tensor,
    v: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
) -> torch.Tensor:
    base = lowbit_linear(x, qweight, scales, zeros, bias, bits, group_size)
    return base + (x @ u.to(x.dtype)) @ v.to(x.dtype)


@lowrank_linear.register_fake
def _(x, qweight, scales, zeros, u, v, bias, bits, group_size):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


_EDGEQ = values.Opset(DOMAIN, OPSET_VERSION)


def _onnx_lowrank_linear(x, qweight, scales, zeros, u, v, bias=None, bits: int = 4, group_size: int = 128):
    if bias is None:
        return _EDGEQ.LowRankLinear(x, qweight, scales, zeros, u, v, bits=bits, group_size=group_size)
    return _EDGEQ.LowRankLinear(x, qweight, scales, zeros, u, v, bias, bits=bits, group_size=group_size)


register_translation(torch.ops.edgeq.lowrank_linear.default, _onnx_lowrank_linear)
