"""qdq_conv: a DequantizeLinear of an int8/uint8 4-D weight initializer (per output channel or
per tensor) that feeds only Conv weight inputs becomes one ``QConv`` per Conv, so the kernel
reads the 8-bit weight (``lower_qdq_conv``); the stock importer would fold the dequantization
into a float32 copy of the weight (4x the bytes).

Pattern: the Conv is 2-D with explicit (or no) padding; a blocked DequantizeLinear, a weight
that is also the Conv's input, or a DequantizeLinear whose output the graph returns stays.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from edgeq.pass_manager import Pass, register_pass, register_property
from edgeq.passes._onnx import consumers
from edgeq.targets.pre_tvm.importer_ops import PACKED_DOMAIN, QCONV, use_domain

_EIGHT_BIT = {TensorProto.INT8, TensorProto.UINT8}
_CONV_ATTRS = ("pads", "strides", "dilations", "group")


def _matches(graph: onnx.GraphProto):
    """(index of the DequantizeLinear, its Conv users) for each match."""
    inits = {t.name: t for t in graph.initializer}
    users_of, graph_outputs = consumers(graph), {o.name for o in graph.output}
    for index, node in enumerate(graph.node):
        if not _is_weight_dequantize(node, inits) or node.output[0] in graph_outputs:
            continue
        users = users_of.get(node.output[0], [])
        if users and all(_fits(u, node.output[0]) for u in users):
            yield index, node, users


def qdq_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite DQ(8-bit weight) + Conv to QConv where the form fits; leave the rest as it is."""
    graph = model.graph
    drop: set[int] = set()
    for index, node, users in list(_matches(graph)):
        weight, scale = node.input[0], node.input[1]
        zero = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        for user in users:
            attrs = {a.name: helper.get_attribute_value(a) for a in user.attribute if a.name in _CONV_ATTRS}
            bias = user.input[2] if len(user.input) > 2 else ""
            user.CopyFrom(helper.make_node(QCONV, [user.input[0], weight, scale, zero, bias], list(user.output),
                                           name=user.name, domain=PACKED_DOMAIN, **attrs))
        drop.add(index)
    if drop:
        kept = [n for i, n in enumerate(graph.node) if i not in drop]
        del graph.node[:]
        graph.node.extend(kept)
        use_domain(model)
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


def has_no_float_conv_weights(model: onnx.ModelProto) -> bool:
    return next(_matches(model.graph), None) is None


register_property("conv_weights_8bit", has_no_float_conv_weights)  # no 8-bit conv weight left to dequantize to float
register_pass(Pass(
    name="qdq_conv", run=qdq_conv, doc=__doc__.splitlines()[0], guarantees=frozenset({"conv_weights_8bit"}),
))
