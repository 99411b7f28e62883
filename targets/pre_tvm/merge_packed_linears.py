"""merge_packed_linears: packed low-bit linears that read the same input become one kernel (horizontal fusion).

An attention block's q/k/v projections and an MLP's gate/up projections all multiply the same
activations. As separate kernels each one re-reads and re-packs X, and each is one more VM call
and thread-pool launch; k/v (576→192 in SmolLM2) are too narrow to keep two threads busy. Here
(before import) such a group of ``PackedLinear``/``LowBitLinear`` nodes with the same bits, group
size and input width becomes one node over the weights concatenated along N, followed by a
``Split`` that gives each original output back. The packed bytes are only reordered, so the
artifact's weight bytes do not change; each output row is computed exactly as before.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.pass_manager import Pass, default_opset, register_pass, register_property
from edgeq.targets.pre_tvm.importer_ops import PACKED_DOMAIN, PACKED_LINEAR

MERGEABLE = {(PACKED_DOMAIN, PACKED_LINEAR), ("edgeq", "LowBitLinear")}
MIN_SPLIT_OPSET = 13  # Split takes its sizes as an input from opset 13


def merge_packed_linears(model: onnx.ModelProto) -> onnx.ModelProto:
    """Merge every group of mergeable nodes sharing input, attributes and weight layout."""
    if default_opset(model) < MIN_SPLIT_OPSET:
        return model
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    merged = {id(group[0]): group for group in _groups(graph, inits)}
    if not merged:
        return model
    new_nodes, drop = [], {id(n) for group in merged.values() for n in group}
    for node in graph.node:
        if id(node) in merged:
            new_nodes += _merge(merged[id(node)], inits, graph)
        elif id(node) not in drop:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _groups(graph: onnx.GraphProto, inits: dict) -> list[list[onnx.NodeProto]]:
    """The groups of two or more nodes that merge."""
    groups: dict[tuple, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        key = _merge_key(node, inits)
        if key is not None:
            groups[key].append(node)
    return [group for group in groups.values() if len(group) > 1]


def _merge_key(node: onnx.NodeProto, inits: dict) -> tuple | None:
    """What must agree for ``node`` to merge with others (None: it cannot merge)."""
    if (node.domain, node.op_type) not in MERGEABLE or len(node.input) not in (4, 5) or len(node.output) != 1:
        return None
    weights = node.input[1:]
    if not all(name in inits for name in weights):
        return None
    attrs = tuple(sorted((a.name, helper.get_attribute_value(a)) for a in node.attribute))
    layout = tuple((inits[name].data_type, tuple(inits[name].dims[1:])) for name in weights)
    return node.domain, node.op_type, node.input[0], attrs, layout


def _merge(group: list[onnx.NodeProto], inits: dict, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """One node over the concatenated weights, then a Split back into the group's outputs."""
    first = group[0]
    base = f"{first.output[0]}.merged"
    names = []
    for slot in range(1, len(first.input)):
        stacked = np.concatenate([numpy_helper.to_array(inits[n.input[slot]]) for n in group], axis=0)
        tensor = numpy_helper.from_array(stacked, f"{base}.{slot}")
        graph.initializer.append(tensor)
        names.append(tensor.name)
    sizes = numpy_helper.from_array(np.array([inits[n.input[1]].dims[0] for n in group], np.int64), f"{base}.sizes")
    graph.initializer.append(sizes)
    fused = helper.make_node(first.op_type, [first.input[0], *names], [base], name=base, domain=first.domain)
    fused.attribute.extend(first.attribute)
    split = helper.make_node("Split", [base, sizes.name], [n.output[0] for n in group], name=f"{base}.split", axis=-1)
    return [fused, split]


def has_no_mergeable_linears(model: onnx.ModelProto) -> bool:
    graph = model.graph
    return default_opset(model) < MIN_SPLIT_OPSET or not _groups(graph, {t.name: t for t in graph.initializer})


register_property("packed_linears_merged", has_no_mergeable_linears)  # no two packed linears left to merge
register_pass(Pass(
    name="merge_packed_linears", run=merge_packed_linears, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"packed_linears_merged"}),
))
