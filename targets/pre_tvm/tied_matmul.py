"""tied_matmul: ``MatMul(X, Transpose(W))`` with ``W`` a 2-D initializer becomes one
``LinearTransposedWeight(X, W)`` reading ``W`` as ``[N, K]`` rows (``lower_tied``).

LLaMA's lm_head shares the embedding table; TVM would fold ``Transpose(W)`` into a second
constant and store the table twice. A Transpose left with no reader goes.
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgeq.pass_manager import Pass, register_pass, register_property
from edgeq.targets.pre_tvm.importer_ops import LINEAR_NT, PACKED_DOMAIN, use_domain


def _matches(graph: onnx.GraphProto):
    """(MatMul, its Transpose) for each match."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in producers:
            continue
        src = producers[node.input[1]]
        perm = [list(a.ints) for a in src.attribute if a.name == "perm"]
        if src.op_type == "Transpose" and src.input[0] in inits and len(inits[src.input[0]].dims) == 2 and perm in ([], [[1, 0]]):
            yield node, src


def tied_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    rewritten = False
    for node, src in list(_matches(graph)):
        node.CopyFrom(helper.make_node(LINEAR_NT, [node.input[0], src.input[0]], list(node.output),
                                       name=node.name, domain=PACKED_DOMAIN))
        rewritten = True
    if rewritten:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        kept = [n for n in graph.node if n.op_type != "Transpose" or n.output[0] in used]
        del graph.node[:]
        graph.node.extend(kept)
        use_domain(model)
    return model


def has_no_transposed_weight_matmul(model: onnx.ModelProto) -> bool:
    return next(_matches(model.graph), None) is None


register_property("no_transposed_weight_matmul", has_no_transposed_weight_matmul)
register_pass(Pass(
    name="tied_matmul", run=tied_matmul, doc=__doc__.splitlines()[0], guarantees=frozenset({"no_transposed_weight_matmul"}),
))
