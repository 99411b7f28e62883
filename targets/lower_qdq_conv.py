"""QDQ convolutions that keep their 8-bit weights: a ``DequantizeLinear`` of an int8/uint8 4-D
weight initializer (per output channel or per tensor) that feeds only ``Conv`` weight inputs
becomes one ``QConv`` node before import (``prepare``), lowered to one TE reduction that reads
the 8-bit weight and applies the zero point and scale inside the kernel. The stock importer
would fold the dequantization into a float32 copy of the weight (4x the bytes).

    Y[b, o, i, j] = s[o] * sum_{c, y, x} X[b, c', i·sh + y·dh, j·sw + x·dw] * (q[o, c, y, x] - z[o])  (+ bias[o])

The scale is factored out of the sum, so the result differs from onnxruntime's (which
dequantizes first) by float rounding only.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper
from tvm import relax, te, topi
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter, value_users
from edgeq.targets.integer_ops import conv2d_window
from edgeq.targets.lower_lowbit import PACKED_DOMAIN

QCONV = "QConv"
_EIGHT_BIT = {TensorProto.INT8, TensorProto.UINT8}
_CONV_ATTRS = ("pads", "strides", "dilations", "group")


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite DQ(8-bit weight) + Conv to QConv where the form fits; leave the rest as it is."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers, graph_outputs = value_users(graph)
    drop: set[int] = set()
    for node in graph.node:
        if not _is_weight_dequantize(node, inits) or node.output[0] in graph_outputs:
            continue
        users = consumers[node.output[0]]
        if not users or not all(_fits(u, node.output[0]) for u in users):
            continue
        weight, scale = node.input[0], node.input[1]
        zero = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        for user in users:
            attrs = {a.name: helper.get_attribute_value(a) for a in user.attribute if a.name in _CONV_ATTRS}
            bias = user.input[2] if len(user.input) > 2 else ""
            user.CopyFrom(helper.make_node(QCONV, [user.input[0], weight, scale, zero, bias], list(user.output),
                                           name=user.name, domain=PACKED_DOMAIN, **attrs))
        drop.add(id(node))
    if drop:
        kept = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(kept)
        if not any(o.domain == PACKED_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(PACKED_DOMAIN, 1))
    return model


def _is_weight_dequantize(node, inits) -> bool:
    if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return False
    weight = inits[node.input[0]]
    if weight.data_type not in _EIGHT_BIT or len(weight.dims) != 4:
        return False
    if not all(name in inits for name in node.input[1:] if name):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    scale = inits[node.input[1]]
    per_channel = list(scale.dims) == [weight.dims[0]] and attrs.get("axis", 1) % 4 == 0
    return not attrs.get("block_size", 0) and (per_channel or len(scale.dims) == 0)


def _fits(user, name) -> bool:
    """A 2-D Conv taking ``name`` as its weight, with explicit (or no) padding."""
    if user.op_type != "Conv" or len(user.input) < 2 or user.input[1] != name or user.input[0] == name:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in user.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad == "NOTSET" and len(attrs.get("kernel_shape", [0, 0])) == 2


@register_converter(QCONV)
class QConv(OnnxOpConverter):
    """``QConv`` (x, 8-bit weight, scale, zero point, bias): one float32 TE reduction."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, weight, scale = inputs[0], inputs[1], inputs[2]
        zero = inputs[3] if inputs[3] is not None else relax.const(0, "int32")
        bias = inputs[4]
        pads = [int(p) for p in attr.get("pads", [0, 0, 0, 0])]
        strides = [int(s) for s in attr.get("strides", [1, 1])]
        dilations = [int(d) for d in attr.get("dilations", [1, 1])]
        groups = int(attr.get("group", 1))

        def qconv(x, w, scale, zero, *bias):
            n, padded, out_h, out_w, (rc, ry, rx) = conv2d_window(x, w, pads, strides, dilations)
            out_ch, per_group = (int(d) for d in w.shape[:2])
            out_per_group = out_ch // groups

            def per_channel(t, o):
                return t[o] if len(t.shape) == 1 else t()

            acc = te.compute(
                (n, out_ch, out_h, out_w),
                lambda b, o, i, j: te.sum(
                    padded[b, o // out_per_group * per_group + rc, i * strides[0] + ry * dilations[0], j * strides[1] + rx * dilations[1]]
                    * (w[o, rc, ry, rx].astype("int32") - per_channel(zero, o).astype("int32")).astype(x.dtype),
                    axis=[rc, ry, rx],
                ),
                name="qconv_acc",
            )

            def out(b, o, i, j):
                y = acc[b, o, i, j] * per_channel(scale, o).astype(x.dtype)
                return y + bias[0][o].astype(x.dtype) if bias else y

            return te.compute(acc.shape, out, name="qconv")

        args = [x, weight, scale, zero] + ([bias] if bias is not None else [])
        return bb.emit_te(qconv, *args, primfunc_name_hint="qdq_conv2d")  # "conv2d" names it in profiles
