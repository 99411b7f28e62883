"""Low-bit and blocked ``DequantizeLinear``, which the stock importer cannot take.

Before import (``prepare``): a DequantizeLinear of an int2/uint2/int4/uint4/int8/uint8 weight
initializer that feeds only ``MatMul`` (as its B input) becomes one ``PackedLinear`` node with the
weight re-packed in edgeq's layout (``[N, K]`` rows, k packed), so the kernel unpacks inside the
matmul and the artifact keeps the packed bytes. Signed values are shifted to unsigned (``q + 2^(b-1)``
with the zero point shifted alike: the same real values). Any other low-bit initializer is
widened to int8/uint8 (the importer cannot read 2/4-bit tensors), and a blocked DequantizeLinear
is converted here with its scales repeated along the block axis.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import get_type

from edgeq.maths.packing import pack
from edgeq.targets.importer import register_converter, value_users
from edgeq.targets.lower_lowbit import PACKED_DOMAIN, PACKED_LINEAR

_BITS = {TensorProto.INT2: 2, TensorProto.UINT2: 2, TensorProto.INT4: 4, TensorProto.UINT4: 4,
         TensorProto.INT8: 8, TensorProto.UINT8: 8}
_SIGNED = {TensorProto.INT2, TensorProto.INT4, TensorProto.INT8}
_NARROW = {TensorProto.INT2: np.int8, TensorProto.INT4: np.int8, TensorProto.UINT2: np.uint8, TensorProto.UINT4: np.uint8}


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite low-bit DQ + MatMul to PackedLinear and widen the remaining 2/4-bit initializers."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers, graph_outputs = value_users(graph)
    drop: set[int] = set()
    new_inits: list[TensorProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        users = consumers[node.output[0]]
        weight = inits[node.input[0]]
        if (weight.data_type in _BITS and len(weight.dims) == 2 and node.output[0] not in graph_outputs and users
                and all(u.op_type == "MatMul" and list(u.input).index(node.output[0]) == 1 for u in users)
                and all(n in inits for n in node.input[1:] if n)):
            packed = _packed_linear_inputs(node, inits)
            if packed is not None:
                tensors, bits, group = packed
                new_inits += tensors
                for user in users:
                    user.CopyFrom(helper.make_node(
                        PACKED_LINEAR, [user.input[0], *(t.name for t in tensors)], list(user.output),
                        name=user.name, domain=PACKED_DOMAIN, bits=bits, group_size=group))
                drop.add(id(node))
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _remove_unused_initializers(graph)
    for t in graph.initializer:
        if t.data_type in _NARROW:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(_NARROW[t.data_type]), t.name))
    if new_inits and not any(o.domain == PACKED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PACKED_DOMAIN, 1))
    return model


def _packed_linear_inputs(node, inits):
    """(packed weight, scales, zeros) for a DQ of W ``[K, N]`` blocked along K or per column."""
    weight = inits[node.input[0]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    q = numpy_helper.to_array(weight).astype(np.int32)
    k_dim, n_dim = q.shape
    scale = numpy_helper.to_array(inits[node.input[1]])
    zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    zero = numpy_helper.to_array(inits[zp_name]).astype(np.int32) if zp_name else np.zeros(scale.shape, np.int32)
    axis = attrs.get("axis", 1) % 2
    block = attrs.get("block_size", 0)
    if block and axis == 0 and scale.ndim == 2 and k_dim % block == 0 and scale.shape == (k_dim // block, n_dim):
        scales, zeros, group = scale.T, zero.T, block
    elif not block and axis == 1 and scale.ndim == 1 and scale.shape[0] == n_dim:
        scales, zeros, group = scale[:, None], zero[:, None], k_dim
    elif not block and scale.ndim == 0:
        scales, zeros, group = np.full((n_dim, 1), scale), np.full((n_dim, 1), zero), k_dim
    else:
        return None
    bits = _BITS[weight.data_type]
    offset = 1 << (bits - 1) if weight.data_type in _SIGNED else 0
    if bits == 2 and k_dim % 4 or bits == 4 and k_dim % 2:
        return None
    qweight = pack(torch.from_numpy(np.ascontiguousarray(q.T + offset)), bits).numpy()
    base = node.output[0]
    tensors = [
        numpy_helper.from_array(qweight, f"{base}.qweight"),
        numpy_helper.from_array(np.ascontiguousarray(scales), f"{base}.scales"),
        numpy_helper.from_array(np.ascontiguousarray(zeros + offset).astype(np.uint8), f"{base}.zeros"),
    ]
    return tensors, bits, group


def _remove_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


@register_converter("DequantizeLinear")
class BlockedDequantizeLinear(onnx_frontend.DequantizeLinear):
    """Blocked DequantizeLinear (opset 21+): scales and zero points repeated along the block
    axis; the unblocked forms go to the stock converter."""

    @classmethod
    def _impl_v21(cls, bb, inputs, attr, params):
        if not attr.get("block_size", 0):
            return super()._impl_v21(bb, inputs, attr, params)
        return cls._blocked(inputs, attr, inputs[1].ty.dtype.dtype)

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        if not attr.get("block_size", 0):
            return super()._impl_v23(bb, inputs, attr, params)
        output_dtype = attr.get("output_dtype", 0)
        return cls._blocked(inputs, attr, get_type(output_dtype) if output_dtype else inputs[1].ty.dtype.dtype)

    @staticmethod
    def _blocked(inputs, attr, out_dtype):
        x, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        block = attr["block_size"]
        ndim = len(x.ty.shape)
        axis = attr.get("axis", 1) % ndim
        extent = x.ty.shape[axis]

        def widen(t):
            return relax.op.strided_slice(relax.op.repeat(t, block, axis), [axis], [0], [extent])

        xf = relax.op.astype(x, "float32")
        if zp is not None:
            xf = relax.op.subtract(xf, relax.op.astype(widen(zp), "float32"))
        return relax.op.astype(relax.op.multiply(xf, relax.op.astype(widen(scale), "float32")), out_dtype)
