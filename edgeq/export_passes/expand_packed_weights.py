"""expand_packed_weights: each ``edgeq.export.PackedWeight`` placeholder (a weight-only conv's
weight) becomes standard ops.

With ``standard`` (the default) and a standard dtype for its bit width, one
``DequantizeLinear(uint4/uint8/uint2 [N, K], axis=1, block_size)``; otherwise the unpack and
group-dequantize ops on the packed uint8 tensor (``edgeq.opset``'s function-body builders),
which is also how verify mode runs a placeholder before this pass.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from edgeq.export_passes.lower_to_dequantize_linear import standard_dtypes
from edgeq.maths.packing import unpack
from edgeq.opset._function import FunctionBuilder, dequantize_groups, unpack_weights
from edgeq.opset.lowbit_embedding import PLACEHOLDER_DOMAIN
from edgeq.pass_manager import Pass, default_opset, register_onnx_reference, register_pass, register_property


def unpack_and_dequantize(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    """The placeholder as unpack + group-dequantize nodes, named under the node's name."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    base = node.name or node.output[0]
    b = FunctionBuilder("PackedWeight", ["QWeight", "Scales", "Zeros"], ["W"], [], opset)
    like = b.const(np.zeros((), np.float32), np.float32)
    dequantize_groups(b, unpack_weights(b, "QWeight", attrs["bits"]), "Scales", "Zeros", attrs["group_size"], like=like)
    b.nodes[-1].output[0] = "W"
    rename = dict(zip(["QWeight", "Scales", "Zeros", "W"], list(node.input) + list(node.output)))
    for inner in b.nodes:
        inner.input[:] = [rename.get(n, f"{base}/{n}") for n in inner.input]
        inner.output[:] = [rename.get(n, f"{base}/{n}") for n in inner.output]
        inner.name = f"{base}/{inner.output[0].rsplit('/', 1)[-1]}"
    return b.nodes


def expand_packed_weights(proto: onnx.ModelProto, opset: int, standard: bool) -> int:
    """Replace the placeholders in place; returns how many."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    dtypes = standard_dtypes(opset)
    new_nodes, added, dropped, count = [], [], set(), 0
    for node in graph.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            new_nodes.append(node)
            continue
        count += 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        bits, group = attrs["bits"], attrs["group_size"]
        base = node.name or node.output[0]
        if standard and bits in dtypes and all(name in inits for name in node.input):
            packed, scales, zeros = (onnx.numpy_helper.to_array(inits[name]) for name in node.input)
            q = unpack(torch.from_numpy(packed.copy()), bits, packed.shape[1] * 8 // bits).numpy()
            names = [f"{base}.qweight", f"{base}.scales", f"{base}.zeros"]
            added += [onnx.numpy_helper.from_array(q.astype(dtypes[bits]), names[0]),
                      onnx.numpy_helper.from_array(scales.astype(np.float32), names[1]),
                      onnx.numpy_helper.from_array(zeros.astype(dtypes[bits]), names[2])]
            dropped.update(node.input)
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", names, list(node.output), name=base, axis=1, block_size=group))
            continue
        new_nodes += unpack_and_dequantize(node, opset)
    if count:
        unused = {name for name in dropped if not any(name in n.input for n in new_nodes)}
        kept = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept + added)
        del graph.node[:]
        graph.node.extend(new_nodes)
        kept_opsets = [o for o in proto.opset_import if o.domain != PLACEHOLDER_DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(kept_opsets)
    return count


def has_no_placeholders(model: onnx.ModelProto) -> bool:
    return all(n.domain != PLACEHOLDER_DOMAIN for n in model.graph.node)


def _run(model: onnx.ModelProto, opset: int | None = None, standard: bool = True) -> onnx.ModelProto:
    expand_packed_weights(model, opset or default_opset(model), standard)
    return model


register_onnx_reference(PLACEHOLDER_DOMAIN, "PackedWeight", unpack_and_dequantize)
register_property("no_placeholders", has_no_placeholders)  # no export-time placeholder op left
register_pass(Pass(
    name="expand_packed_weights", run=_run, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"no_placeholders"}),
))
