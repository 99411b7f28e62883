"""fold_batchnorm: BatchNormalization after a Conv or Gemm with constant weights, folded in.

    W' = W * gamma / sqrt(var + eps)            (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

Fires only when the Conv/Gemm output feeds the BatchNormalization alone and every parameter is
a constant; otherwise the pair is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.passes._onnx import consumers, initializers, producers
from edgeq.pass_manager import Pass, register_pass


def _const(model, inits, name):
    from edgeq.passes._onnx import constant_value

    return constant_value(model, name, inits) if name else None


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    inits = initializers(model)
    users = consumers(graph)
    prod = producers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        layer = prod.get(bn.input[0])
        if layer is None or layer.op_type not in ("Conv", "Gemm") or len(users.get(layer.output[0], [])) != 1 or layer.output[0] in outputs:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
        if layer.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            continue
        gamma, beta, mean, var = (_const(model, inits, n) for n in bn.input[1:5])
        w = _const(model, inits, layer.input[1])
        b = _const(model, inits, layer.input[2]) if len(layer.input) > 2 and layer.input[2] else None
        if any(v is None for v in (gamma, beta, mean, var, w)):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        bias = b.astype(np.float64) if b is not None else np.zeros_like(factor)
        if layer.op_type == "Conv":
            w_new = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
        else:
            w_new = w * (factor.reshape(-1, 1) if attrs.get("transB", 0) else factor.reshape(1, -1))
        b_new = (bias - mean) * factor + beta
        w_name, b_name = f"{layer.output[0]}_bnfold_w", f"{layer.output[0]}_bnfold_b"
        new_inits += [numpy_helper.from_array(w_new.astype(w.dtype), w_name), numpy_helper.from_array(b_new.astype(w.dtype), b_name)]
        inputs = [layer.input[0], w_name, b_name]
        del layer.input[:]
        layer.input.extend(inputs)
        layer.output[0] = bn.output[0]
        drop.add(id(bn))
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    from edgeq.passes.dead_nodes import remove_dead_nodes

    return remove_dead_nodes(model)


register_pass(Pass(
    name="fold_batchnorm", run=fold_batchnorm, doc=__doc__.splitlines()[0],
    guarantees=frozenset(), tolerance=1e-5,
))
