"""pack_lowbit_matmul: a DequantizeLinear of a 2/4/8-bit weight initializer feeding only MatMul
B inputs becomes one ``PackedLinear`` per MatMul, and every other 2/4-bit initializer is widened
to int8/uint8 (TVM's importer reads neither int4 nor int2 tensors). float32 scales that are all
exactly float16 values are stored as float16 (the kernels convert them as they read them).

``PackedLinear`` takes the weight re-packed in edgeq's layout (``[N, K]`` rows, k packed), so the
kernel unpacks inside the matmul and the artifact keeps the packed bytes. Signed values are
shifted to unsigned (``q + 2^(b-1)``, the zero point alike: the same real values). The pattern
takes a weight ``[K, N]`` blocked along K, per column, or per tensor; others stay DequantizeLinear
(``lower_dequantize`` converts the blocked form).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.maths.packing import pack
from edgeq.pass_manager import Pass, register_pass, register_property
from edgeq.passes._onnx import consumers
from edgeq.passes.dead_nodes import remove_dead_nodes
from edgeq.targets.pre_tvm.importer_ops import PACKED_DOMAIN, PACKED_LINEAR, use_domain

BITS = {TensorProto.INT2: 2, TensorProto.UINT2: 2, TensorProto.INT4: 4, TensorProto.UINT4: 4,
        TensorProto.INT8: 8, TensorProto.UINT8: 8}
_SIGNED = {TensorProto.INT2, TensorProto.INT4, TensorProto.INT8}
_NARROW = {TensorProto.INT2: np.int8, TensorProto.INT4: np.int8, TensorProto.UINT2: np.uint8, TensorProto.UINT4: np.uint8}


def pack_lowbit_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite low-bit DQ + MatMul to PackedLinear and widen the remaining 2/4-bit initializers."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users_of, graph_outputs = consumers(graph), {o.name for o in graph.output}
    drop: set[int] = set()
    new_inits: list[TensorProto] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        users = users_of.get(node.output[0], [])
        weight = inits[node.input[0]]
        if (weight.data_type in BITS and len(weight.dims) == 2 and node.output[0] not in graph_outputs and users
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
                drop.add(index)
    kept = [n for i, n in enumerate(graph.node) if i not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    remove_dead_nodes(model)  # the DQ nodes' unpacked weights, now unread
    for t in graph.initializer:
        if t.data_type in _NARROW:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(_NARROW[t.data_type]), t.name))
    if new_inits:
        use_domain(model)
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
    bits = BITS[weight.data_type]
    offset = 1 << (bits - 1) if weight.data_type in _SIGNED else 0
    if bits == 2 and k_dim % 4 or bits == 4 and k_dim % 2:
        return None
    qweight = pack(torch.from_numpy(np.ascontiguousarray(q.T + offset)), bits).numpy()
    base = node.output[0]
    tensors = [
        numpy_helper.from_array(qweight, f"{base}.qweight"),
        numpy_helper.from_array(narrowest_scales(np.ascontiguousarray(scales)), f"{base}.scales"),
        numpy_helper.from_array(np.ascontiguousarray(zeros + offset).astype(np.uint8), f"{base}.zeros"),
    ]
    return tensors, bits, group


def narrowest_scales(scales: np.ndarray) -> np.ndarray:
    """float32 scales as float16 where every one converts exactly (quantizers that keep float16
    scales): the same values in half the bytes, which the decode step reads once per token."""
    if scales.dtype == np.float32:
        narrow = scales.astype(np.float16)
        if np.array_equal(narrow.astype(np.float32), scales):
            return narrow
    return scales


def has_no_narrow_initializers(model: onnx.ModelProto) -> bool:
    return all(t.data_type not in _NARROW for t in model.graph.initializer)


register_property("no_narrow_initializers", has_no_narrow_initializers)  # no int2/uint2/int4/uint4 initializer
register_pass(Pass(
    name="pack_lowbit_matmul", run=pack_lowbit_matmul, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"no_narrow_initializers"}),
))
