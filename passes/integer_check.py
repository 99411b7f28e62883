"""Which ops inside a quantized model's integer region still compute in float.

The integer region is everything on a path from a QuantizeLinear that reads a graph input to a
DequantizeLinear whose output is a graph output; those two stay (they are the region's edges),
and every other node in between should have only integer outputs.
"""

from __future__ import annotations

import onnx

from edgeq.pass_manager import register_property
from edgeq.passes._onnx import FLOAT_TYPES, consumers, producers


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def region_edges(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(QuantizeLinear nodes reading a graph input, DequantizeLinear nodes writing a graph output)."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    starts = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inputs]
    ends = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in outputs]
    return starts, ends


def has_integer_region(model: onnx.ModelProto) -> bool:
    """Every graph output is dequantized from integers that a quantized graph input leads to."""
    starts, ends = region_edges(model)
    return bool(starts) and len(ends) == len(model.graph.output)


def float_ops_in_integer_region(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes with a float output between the input QuantizeLinear(s) and the output
    DequantizeLinear(s), in graph order (empty for an integer-only model)."""
    graph = model.graph
    prod = producers(graph)
    users = consumers(graph)
    starts, ends = region_edges(model)
    forward: set[int] = set()
    stack = [u for s in starts for u in users.get(s.output[0], [])]
    while stack:
        n = stack.pop()
        if id(n) in forward:
            continue
        forward.add(id(n))
        stack.extend(u for out in n.output for u in users.get(out, []))
    backward: set[int] = set()
    stack = [prod[i] for e in ends for i in e.input if i in prod]
    while stack:
        n = stack.pop()
        if id(n) in backward:
            continue
        backward.add(id(n))
        stack.extend(prod[i] for i in n.input if i in prod)
    edges = {id(n) for n in starts + ends}
    types = _elem_types(model)
    return [
        n for n in graph.node
        if id(n) in forward and id(n) in backward and id(n) not in edges
        and any(types.get(o) in FLOAT_TYPES for o in n.output if o)
    ]


def is_integer_only(model: onnx.ModelProto) -> bool:
    return has_integer_region(model) and not float_ops_in_integer_region(model)


register_property("integer_only", is_integer_only)  # no float op between the input Q and the output DQ
