"""fold_rotations: rotations and permutations merged into the neighbouring weights.

    MatMul(MatMul(x, Q), W)            =>  MatMul(x, Q W)         (Q, W constant; Q's output used once)
        and when Q W == I (an orthogonal pair such as H and H^T) the pair disappears: x itself
    Gather(x, p, axis=-1) -> MatMul(., W)   =>  MatMul(x, W'), W'[p[i]] = W[i]   (p a permutation)
    MatMul(x, W) -> Gather(., p, axis=-1)   =>  MatMul(x, W[:, p])
    Gather(Gather(x, p, -1), q, -1)         =>  Gather(x, p[q]), and nothing when p[q] is the identity
    edgeq.Hadamard(x) -> MatMul(., W)       =>  MatMul(x, M W)     M = the op's matrix, Signs included
    MatMul(x, W) -> edgeq.Hadamard          =>  MatMul(x, W M)
    edgeq.Hadamard -> edgeq.Hadamard        =>  nothing, when the product of their matrices is I

A rotation that has no constant neighbour to merge into (an online Hadamard between two
activations) stays where it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.opset import DOMAIN, edgeq_ops
from edgeq.passes._onnx import constant_value as _constant_value, consumers, initializers, producers
from edgeq.passes.dead_nodes import remove_dead_nodes
from edgeq.pass_manager import Pass, register_pass

IDENTITY_ATOL = 1e-6


def _hadamard_matrix(model, node, inits, dim: int, constant_value=None) -> np.ndarray | None:
    """The dense [dim, dim] matrix M of an ``edgeq.Hadamard`` node (x -> x @ M), or None when its
    signs are not constant or ``dim`` is not a multiple of its block size."""
    if node.domain != DOMAIN or node.op_type != "Hadamard":
        return None
    constant_value = constant_value or _constant_value
    size = next((a.i for a in node.attribute if a.name == "size"), None)
    signs = None
    if len(node.input) > 1 and node.input[1]:
        signs = constant_value(model, node.input[1], inits)
        if signs is None:
            return None
    if size is None or dim % size or (signs is not None and signs.size != dim):
        return None
    reference = edgeq_ops()["Hadamard"].reference
    return reference(np.eye(dim), None if signs is None else signs.astype(np.float64), size=size)


def _last_axis_gather(model, node, inits, constant_value=None) -> np.ndarray | None:
    """The permutation of a Gather along the last axis, or None."""
    if node.op_type != "Gather":
        return None
    constant_value = constant_value or _constant_value
    perm = constant_value(model, node.input[1], inits)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if perm is None or perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(perm.size)):
        return None
    if axis != -1:
        rank = _rank(model, node.input[0])
        if rank is None or axis != rank - 1:
            return None
    return perm.astype(np.int64)


def _rank(model, name):
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _rewire(graph, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


def fold_rotations(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    cache: dict[str, np.ndarray | None] = {}  # constant values by name (new constants get new names)
    while _fold_one(model, graph, outputs, cache):  # one pair per step, until nothing merges
        remove_dead_nodes(model)
    return model


def _fold_one(model, graph, outputs, cache) -> bool:
    inits = initializers(model)

    def constant_value(m, name, _inits):
        if name not in cache:
            cache[name] = _constant_value(m, name, _inits)
        return cache[name]
    users = consumers(graph)
    prod = producers(graph)

    def add_init(value, hint):
        name = f"{hint}_folded_{len(graph.initializer)}"
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    for node in graph.node:
        inner = prod.get(node.input[0]) if node.input else None
        if inner is None or inner.output[0] in outputs or len(users.get(inner.output[0], [])) != 1:
            continue
        if node.op_type == "MatMul" and inner.op_type == "MatMul":
            q = constant_value(model, inner.input[1], inits)
            w = constant_value(model, node.input[1], inits)
            if q is None or w is None or q.ndim != 2 or w.ndim != 2:
                continue
            merged = (q.astype(np.float64) @ w.astype(np.float64))
            if merged.shape[0] == merged.shape[1] and np.allclose(merged, np.eye(merged.shape[0]), atol=IDENTITY_ATOL):
                if node.output[0] in outputs:
                    continue
                _rewire(graph, node.output[0], inner.input[0])  # Q W = I: both go
            else:
                node.input[0], node.input[1] = inner.input[0], add_init(merged.astype(w.dtype), node.input[1])
            return True
        if node.op_type == "MatMul" and (perm := _last_axis_gather(model, inner, inits, constant_value)) is not None:
            w = constant_value(model, node.input[1], inits)
            if w is None or w.ndim != 2 or w.shape[0] != perm.size:
                continue
            w_new = np.empty_like(w)
            w_new[perm] = w
            node.input[0], node.input[1] = inner.input[0], add_init(w_new, node.input[1])
            return True
        if (perm := _last_axis_gather(model, node, inits, constant_value)) is not None and inner.op_type == "MatMul":
            w = constant_value(model, inner.input[1], inits)
            if w is None or w.ndim != 2 or w.shape[1] != perm.size:
                continue
            inner.input[1] = add_init(np.ascontiguousarray(w[:, perm]), inner.input[1])
            inner.output[0], node.output[0] = node.output[0], inner.output[0]  # the Gather goes dead
            return True
        if node.op_type == "MatMul" and inner.domain == DOMAIN and inner.op_type == "Hadamard":
            w = constant_value(model, node.input[1], inits)
            m = _hadamard_matrix(model, inner, inits, w.shape[0], constant_value) if w is not None and w.ndim == 2 else None
            if m is None:
                continue
            node.input[0], node.input[1] = inner.input[0], add_init((m @ w.astype(np.float64)).astype(w.dtype), node.input[1])
            return True
        if node.domain == DOMAIN and node.op_type == "Hadamard" and inner.op_type == "MatMul":
            w = constant_value(model, inner.input[1], inits)
            m = _hadamard_matrix(model, node, inits, w.shape[1], constant_value) if w is not None and w.ndim == 2 else None
            if m is None:
                continue
            inner.input[1] = add_init((w.astype(np.float64) @ m).astype(w.dtype), inner.input[1])
            inner.output[0], node.output[0] = node.output[0], inner.output[0]  # the Hadamard goes dead
            return True
        if node.domain == DOMAIN and node.op_type == "Hadamard" and inner.domain == DOMAIN and inner.op_type == "Hadamard":
            size = max(next((a.i for a in n.attribute if a.name == "size"), 1) for n in (node, inner))
            signs = [constant_value(model, n.input[1], inits) for n in (node, inner) if len(n.input) > 1 and n.input[1]]
            dim = max([size] + [v.size for v in signs if v is not None])
            m1, m2 = _hadamard_matrix(model, inner, inits, dim, constant_value), _hadamard_matrix(model, node, inits, dim, constant_value)
            if m1 is None or m2 is None or node.output[0] in outputs or not np.allclose(m1 @ m2, np.eye(dim), atol=IDENTITY_ATOL):
                continue
            _rewire(graph, node.output[0], inner.input[0])
            return True
        if (outer := _last_axis_gather(model, node, inits, constant_value)) is not None and (first := _last_axis_gather(model, inner, inits, constant_value)) is not None:
            combined = first[outer]
            if np.array_equal(combined, np.arange(combined.size)) and node.output[0] not in outputs:
                _rewire(graph, node.output[0], inner.input[0])
            else:
                node.input[0], node.input[1] = inner.input[0], add_init(combined, node.input[1])
            return True
    return False


register_pass(Pass(name="fold_rotations", run=fold_rotations, doc=__doc__.splitlines()[0], tolerance=1e-4))
