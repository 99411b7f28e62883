"""lower_to_dequantize_linear: ``LowBitLinear`` whose bit width has a standard dtype becomes
``MatMul(X, DequantizeLinear(Wq^T, scales^T, zeros^T, axis=0, block_size=group_size))`` (+ Add
bias), the form onnxruntime fuses into MatMulNBits.

Pattern: an ``edgeq.LowBitLinear`` with 4 or 8 bits (2 from opset 25) whose packed weight,
scales and zeros are initializers read by it alone (a table shared with a tied embedding stays
packed, so the file holds it once). ``keep_lowbit_linear=True`` (``weight_format="edgeq"``)
leaves every one packed.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from edgeq.maths.packing import unpack
from edgeq.opset import DOMAIN
from edgeq.pass_manager import Pass, default_opset, register_pass, register_property

INT2_OPSET = 25  # the first opset with uint2


def standard_dtypes(opset: int) -> dict:
    """Bit width -> the numpy dtype of the standard ONNX tensor type for it at ``opset``."""
    import ml_dtypes

    dtypes = {4: ml_dtypes.uint4, 8: np.uint8}
    if opset >= INT2_OPSET:
        dtypes[2] = ml_dtypes.uint2
    return dtypes


def _matches(graph: onnx.GraphProto, dtypes: dict):
    """(index, attributes) for each LowBitLinear the pattern takes."""
    inits = {t.name for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for index, node in enumerate(graph.node):
        if node.domain != DOMAIN or node.op_type != "LowBitLinear":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs["bits"] in dtypes and all(w in inits and uses[w] == 1 for w in node.input[1:4]):
            yield index, attrs


def lower_to_dequantize_linear(proto: onnx.ModelProto, opset: int | None = None) -> int:
    """Rewrite the matches in place; returns how many."""
    dtypes = standard_dtypes(opset or default_opset(proto))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    lowered = dict(_matches(graph, dtypes))
    new_nodes, dropped, added = [], set(), []
    for index, node in enumerate(graph.node):
        if index not in lowered:
            new_nodes.append(node)
            continue
        bits, group = lowered[index]["bits"], lowered[index]["group_size"]
        weights = list(node.input[1:4])
        packed, scales, zeros = (onnx.numpy_helper.to_array(inits[w]) for w in weights)
        k = packed.shape[1] * 8 // bits
        q = unpack(torch.from_numpy(packed.copy()), bits, k).numpy()
        base = node.name or node.output[0]
        wq, ws, wz = f"{base}.qweight_t", f"{base}.scales_t", f"{base}.zeros_t"
        added += [
            onnx.numpy_helper.from_array(np.ascontiguousarray(q.T).astype(dtypes[bits]), wq),
            onnx.numpy_helper.from_array(np.ascontiguousarray(scales.T).astype(np.float32), ws),
            onnx.numpy_helper.from_array(np.ascontiguousarray(zeros.T).astype(dtypes[bits]), wz),
        ]
        dropped.update(weights)
        w = f"{base}.weight"
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [wq, ws, wz], [w], name=f"{base}.dequantize", axis=0, block_size=group))
        has_bias = len(node.input) > 4 and node.input[4]
        mm = f"{base}.matmul" if has_bias else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w], [mm], name=f"{base}.matmul"))
        if has_bias:
            new_nodes.append(onnx.helper.make_node("Add", [mm, node.input[4]], [node.output[0]], name=f"{base}.bias"))
    if lowered:
        kept = [t for t in graph.initializer if t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(kept + added)
        del graph.node[:]
        graph.node.extend(new_nodes)
    return len(lowered)


def has_no_lowerable_lowbit_linear(model: onnx.ModelProto) -> bool:
    return next(_matches(model.graph, standard_dtypes(default_opset(model))), None) is None


def _run(model: onnx.ModelProto, opset: int | None = None, keep_lowbit_linear: bool = False) -> onnx.ModelProto:
    if not keep_lowbit_linear:
        lower_to_dequantize_linear(model, opset)
    return model


register_property("lowbit_lowered", has_no_lowerable_lowbit_linear)  # no LowBitLinear left that a standard dtype can hold
register_pass(Pass(
    name="lower_to_dequantize_linear", run=_run, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"lowbit_lowered"}), waived_by={"keep_lowbit_linear": frozenset({"lowbit_lowered"})},
))
