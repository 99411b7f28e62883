"""The ops the pre_tvm passes write for edgeq's TVM importer (domain ``edgeq.tvm``), and the
standard ONNX each one means, which verify mode runs on onnxruntime.

They have no ONNX schema and no function body in the file: only ``edgeq.targets.importer`` reads
them, each through its converter (``lower_lowbit``, ``lower_qdq_conv``, ``lower_tied``).
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgeq.opset import DOMAIN
from edgeq.pass_manager import register_onnx_reference

PACKED_DOMAIN = "edgeq.tvm"
PACKED_LINEAR = "PackedLinear"  # (X, packed QWeight [N, K·bits/8], Scales, Zeros[, Bias]; bits, group_size): LowBitLinear
QCONV = "QConv"  # (X, 8-bit W, scale, zero point, bias; Conv's attributes): Conv(X, DequantizeLinear(W))
LINEAR_NT = "LinearTransposedWeight"  # (X, W [N, K]): MatMul(X, Transpose(W))


def use_domain(model: onnx.ModelProto) -> None:
    """Import ``edgeq.tvm`` once a pass has written one of its ops."""
    if not any(o.domain == PACKED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PACKED_DOMAIN, 1))


def _packed_linear(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    same = helper.make_node("LowBitLinear", list(node.input), list(node.output), name=node.name, domain=DOMAIN)
    same.attribute.extend(node.attribute)
    return [same]


def _qconv(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    x, weight, scale, zero, bias = node.input
    w = f"{node.output[0]}.weight"
    conv = helper.make_node("Conv", [x, w] + ([bias] if bias else []), list(node.output), name=node.name)
    conv.attribute.extend(node.attribute)
    return [helper.make_node("DequantizeLinear", [weight, scale, zero], [w], name=f"{node.output[0]}.dequantize", axis=0), conv]


def _linear_nt(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    w = f"{node.output[0]}.weight_t"
    return [helper.make_node("Transpose", [node.input[1]], [w], name=f"{node.output[0]}.transpose", perm=[1, 0]),
            helper.make_node("MatMul", [node.input[0], w], list(node.output), name=node.name)]


register_onnx_reference(PACKED_DOMAIN, PACKED_LINEAR, _packed_linear)
register_onnx_reference(PACKED_DOMAIN, QCONV, _qconv)
register_onnx_reference(PACKED_DOMAIN, LINEAR_NT, _linear_nt)
