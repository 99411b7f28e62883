"""Tied weights: ``MatMul(X, Transpose(W))`` where ``W`` is an initializer (LLaMA's lm_head,
which shares the embedding table). TVM folds ``Transpose(W)`` into a second constant, storing
the table twice; here the matmul reads ``W`` as ``[N, K]`` rows instead, so it is stored once.
"""

from __future__ import annotations

import onnx
from onnx import helper
from tvm import relax, te
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter
from edgeq.targets.lower_lowbit import PACKED_DOMAIN

LINEAR_NT = "LinearTransposedWeight"


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``MatMul(X, Transpose(W, perm=[1, 0]))`` with W a 2-D initializer to one node."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    rewritten = False
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in producers:
            continue
        src = producers[node.input[1]]
        perm = [list(a.ints) for a in src.attribute if a.name == "perm"]
        if src.op_type == "Transpose" and src.input[0] in inits and len(inits[src.input[0]].dims) == 2 and perm in ([], [[1, 0]]):
            node.CopyFrom(helper.make_node(LINEAR_NT, [node.input[0], src.input[0]], list(node.output),
                                           name=node.name, domain=PACKED_DOMAIN))
            rewritten = True
    if rewritten:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        kept = [n for n in graph.node if n.op_type != "Transpose" or n.output[0] in used]
        del graph.node[:]
        graph.node.extend(kept)
        if not any(o.domain == PACKED_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(PACKED_DOMAIN, 1))
    return model


def linear_nt_te(x, w):
    """``Y[m, n] = sum_k X[m, k] * W[n, k]``."""
    k = te.reduce_axis((0, x.shape[1]), name="k")
    return te.compute((x.shape[0], w.shape[0]), lambda i, j: te.sum(x[i, k] * w[j, k].astype(x.dtype), axis=k),
                      name="linear_nt")


@register_converter(LINEAR_NT)
class LinearTransposedWeight(OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, w = inputs
        shape = list(x.ty.shape)
        flat = bb.normalize(relax.op.reshape(x, (-1, shape[-1]))) if len(shape) != 2 else x
        y = bb.emit_te(linear_nt_te, flat, w, primfunc_name_hint="linear_nt")
        if len(shape) != 2:
            y = bb.normalize(relax.op.reshape(y, [*shape[:-1], w.ty.shape[0]]))
        return y
