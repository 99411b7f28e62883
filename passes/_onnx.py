"""Small ONNX helpers shared by the passes: tensor constants, consumers, edgeq function bodies."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.opset import attach_functions

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def attach_edgeq_functions(model: onnx.ModelProto) -> None:
    """Give every ``edgeq`` node its function body (``edgeq.opset.attach_functions``)."""
    attach_functions(model)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def constant_value(model: onnx.ModelProto, name: str, inits: dict | None = None) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, else None."""
    inits = inits if inits is not None else initializers(model)
    if name in inits:
        return numpy_helper.to_array(inits[name])
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node)
    return users


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def node_label(node: onnx.NodeProto) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"
