"""dead_nodes: remove nodes whose outputs nothing uses, and unused initializers.

A node is live when one of its outputs is a graph output or an input of a live node (including
the names a subgraph reads from the outer scope). Guarantees: the graph outputs are computed by
exactly the same nodes as before.
"""

from __future__ import annotations

import onnx

from edgeq.pass_manager import Pass, register_pass, register_property


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_reads(n))
    return names


def _delete_where(field, dead) -> None:
    """Delete items in place, from the back (no copies of large initializers)."""
    for i in reversed([i for i, item in enumerate(field) if dead(item)]):
        del field[i]


def remove_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place and returned) without dead nodes and unused initializers."""
    graph = model.graph
    live = {o.name for o in graph.output}
    dead: set[int] = set()
    nodes = list(graph.node)
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if any(out in live for out in node.output if out):
            live.update(i for i in node.input if i)
            live.update(_subgraph_reads(node))
        else:
            dead.add(index)
    for index in sorted(dead, reverse=True):
        del graph.node[index]
    _delete_where(graph.initializer, lambda t: t.name not in live)
    _delete_where(graph.value_info, lambda v: v.name not in live)
    return model


def has_no_dead_nodes(model: onnx.ModelProto) -> bool:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return len(remove_dead_nodes(copy).graph.node) == len(model.graph.node)


register_property("no_dead_nodes", has_no_dead_nodes)
register_pass(Pass(
    name="dead_nodes", run=remove_dead_nodes, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"no_dead_nodes"}), tolerance=0.0,
))
