"""fold_scales: per-channel scales folded into the weights of the MatMuls that read them.

    Mul(x, g) -> MatMul(., W)                  =>  MatMul(x, diag(g) W)
        (an RMSNorm's gamma, a SmoothQuant scale s as Mul(x, 1/s) or Div(x, s))
    LayerNormalization(x, gamma, beta) -> MatMul(., W)
                                               =>  LayerNormalization(x, 1, beta/gamma) -> MatMul(., diag(gamma) W)
    RMSNormalization(x, gamma) -> MatMul(., W) =>  RMSNormalization(x, 1) -> MatMul(., diag(gamma) W)

g has one value per input channel of W (shape [K], or broadcast over the last axis); every
consumer of the scaled tensor must be a MatMul with a constant weight, else nothing changes.
LayerNormalization needs gamma != 0 everywhere.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.passes._onnx import constant_value, consumers, initializers
from edgeq.pass_manager import Pass, register_pass


def _channel_vector(value: np.ndarray | None, k: int) -> np.ndarray | None:
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    if value.size == 1:
        return np.full(k, value.reshape(()), value.dtype)
    if value.shape[-1] == k and value.size == k:
        return value.reshape(k)
    return None


def fold_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    inits = initializers(model)
    users = consumers(graph)
    new_inits: list[onnx.TensorProto] = []
    drop: set[int] = set()
    for node in graph.node:
        if node.op_type not in ("Mul", "Div", "LayerNormalization", "RMSNormalization"):
            continue
        out = node.output[0]
        mms = users.get(out, [])
        if not mms or any(u.op_type != "MatMul" or u.input[1] == out for u in mms) or out in {o.name for o in graph.output}:
            continue
        weights = [constant_value(model, u.input[1], inits) for u in mms]
        if any(w is None or w.ndim != 2 for w in weights):
            continue
        k = weights[0].shape[0]
        if node.op_type in ("Mul", "Div"):
            for data, scale in ((0, 1), (1, 0)) if node.op_type == "Mul" else ((0, 1),):
                g = _channel_vector(constant_value(model, node.input[scale], inits), k)
                if g is not None and constant_value(model, node.input[data], inits) is None:
                    break
            else:
                continue
            g = 1.0 / g.astype(np.float64) if node.op_type == "Div" else g.astype(np.float64)
            source = node.input[data]
            drop.add(id(node))
        else:
            g = _channel_vector(constant_value(model, node.input[1], inits), k)
            if g is None or (node.op_type == "LayerNormalization" and np.any(g == 0)):
                continue
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            has_beta = node.op_type == "LayerNormalization" and len(node.input) > 2 and bool(node.input[2])
            beta = constant_value(model, node.input[2], inits) if has_beta else None
            if axis != -1 or (has_beta and beta is None):
                continue
            ones = f"{out}_unit_scale"
            new_inits.append(numpy_helper.from_array(np.ones(k, g.dtype), ones))
            node.input[1] = ones
            if beta is not None:
                name = f"{out}_beta_over_gamma"
                new_inits.append(numpy_helper.from_array((beta.reshape(k) / g).astype(beta.dtype), name))
                node.input[2] = name
            g = g.astype(np.float64)
            source = out
        for u, w in zip(mms, weights):
            name = f"{u.input[1]}_scaled_{len(new_inits)}"
            new_inits.append(numpy_helper.from_array((g.reshape(-1, 1) * w).astype(w.dtype), name))
            u.input[1] = name
            if source != out:
                u.input[0] = source
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    from edgeq.passes.dead_nodes import remove_dead_nodes

    return remove_dead_nodes(model)


register_pass(Pass(name="fold_scales", run=fold_scales, doc=__doc__.splitlines()[0], tolerance=1e-5))
