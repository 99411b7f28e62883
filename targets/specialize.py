"""Specialization of symbolic input dimensions, on request.

By default ``compile`` keeps symbolic dimensions (``symbolic_shapes`` follows torch's shape
arithmetic). Specializing fixes the named dimensions and constant-folds the shape arithmetic
(onnxscript's optimizer, functions not inlined, DequantizeLinear never folded so low-bit weights
stay packed): a fallback for a graph whose shape arithmetic the importer cannot follow, or an
artifact for one size only. The artifact then takes exactly those sizes; ``compile`` records them.
"""

from __future__ import annotations

import onnx

from edgeq.errors import CompileError


def symbolic_dims(model: onnx.ModelProto) -> list[str]:
    """Names of the symbolic dimensions of the model's inputs, in order of appearance."""
    names: list[str] = []
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param not in names:
                names.append(dim.dim_param)
    return names


def specialize(model: onnx.ModelProto, sizes: dict[str, int]) -> onnx.ModelProto:
    """The model with each named input dimension fixed to its size and shape arithmetic folded."""
    import onnx_ir as ir
    import onnxscript.optimizer

    unknown = sorted(set(sizes) - set(symbolic_dims(model)))
    if unknown:
        raise CompileError(f"cannot specialize {', '.join(unknown)}: the model's symbolic input dimensions are "
                           f"{', '.join(symbolic_dims(model)) or 'none'}")
    graph = ir.from_proto(model)
    for value in graph.graph.inputs:
        if value.shape is not None:
            value.shape = ir.Shape([sizes.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d for d in value.shape])
    onnxscript.optimizer.optimize_ir(graph, inline=False, should_fold=_may_fold)
    return ir.to_proto(graph)


def _may_fold(node) -> bool | None:
    """Fold shape arithmetic, never weights: not a dequantization (it would store float weights),
    a custom-domain op, or an op on a weight-sized constant (a transposed copy of a tied table)."""
    if node.op_type == "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return False
    for value in node.inputs:
        if value is not None and value.const_value is not None and value.const_value.size > _WEIGHT_ELEMENTS:
            return False
    return None


_WEIGHT_ELEMENTS = 4096
