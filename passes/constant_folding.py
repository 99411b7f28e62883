"""constant_folding: nodes whose inputs are all constants, evaluated once and stored.

Never folds QuantizeLinear/DequantizeLinear (that would turn packed int8/int4 weights back into
float32 initializers), ``edgeq``-domain ops, or a node whose result is bigger than its inputs and
more than 64 KiB (Expand, Tile, ConstantOfShape would only make the file larger).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.pass_manager import Pass, default_opset, register_pass
from edgeq.passes._onnx import initializers

_NEVER = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
          "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_MAX_GROWTH_BYTES = 64 * 1024


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray], opset: int) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" for i in range(len(values))]
    inputs = [n if orig else "" for n, orig in zip(names, node.input)]
    single = helper.make_node(node.op_type, inputs, list(node.output), domain=node.domain,
                              **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    try:
        ev = ReferenceEvaluator(helper.make_model(
            helper.make_graph([single], "fold", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v, orig in zip(names, values, node.input) if orig],
                              [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]),
            opset_imports=[helper.make_opsetid("", opset)]))
        return [np.asarray(v) for v in ev.run(None, {n: v for n, v, orig in zip(names, values, node.input) if orig})]
    except Exception:
        return None


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    opset = default_opset(model)
    known = {name: numpy_helper.to_array(t) for name, t in initializers(model).items()}
    graph_inputs = {i.name for i in graph.input}
    keep, new_inits = [], []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "value"), None)
            if value is not None:
                known[node.output[0]] = numpy_helper.to_array(value)
            keep.append(node)
            continue
        foldable = (
            node.domain in ("", "ai.onnx") and node.op_type not in _NEVER and not any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute)
            and all((not i) or (i in known and i not in graph_inputs) for i in node.input) and node.input
        )
        results = _evaluate(node, [known.get(i, np.zeros(0)) for i in node.input], opset) if foldable else None
        if results is None:
            keep.append(node)
            continue
        size_in = sum(known[i].nbytes for i in node.input if i)
        if sum(r.nbytes for r in results) > max(size_in, _MAX_GROWTH_BYTES):
            keep.append(node)
            continue
        for name, value in zip(node.output, results):
            known[name] = value
            new_inits.append(numpy_helper.from_array(value, name))
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    from edgeq.passes.dead_nodes import remove_dead_nodes

    return remove_dead_nodes(model)


register_pass(Pass(name="constant_folding", run=fold_constants, doc=__doc__.splitlines()[0], tolerance=1e-6))
