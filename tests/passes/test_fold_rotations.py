"""fold_rotations: an orthogonal pair (H then H^T) cancels, a rotation merges into the next
weight, a Gather permutation merges into the weight before or after it, two inverse
permutations cancel -- outputs within 1e-5 of their scale; a rotation between two activations
(no constant neighbour) stays."""

from __future__ import annotations

import numpy as np
import onnx
from scipy.linalg import hadamard

from edgeq.passes.fold_rotations import fold_rotations
from _passes_testing import before_after, model_from_text, op_types

RNG = np.random.default_rng(2)
K = 8
H = (hadamard(K) / np.sqrt(K)).astype(np.float32)  # orthogonal and symmetric
W = RNG.standard_normal((K, 5)).astype(np.float32)
PERM = RNG.permutation(K).astype(np.int64)

PAIR = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x) => (float[N, 8] y) {
    r = MatMul (x, h)
    back = MatMul (r, ht)
    y = Relu (back)
}
"""

ROTATE_THEN_LINEAR = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x) => (float[N, 5] y) {
    r = MatMul (x, h)
    y = MatMul (r, w)
}
"""

PERMUTE_THEN_LINEAR = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x) => (float[N, 5] y) {
    p = Gather <axis = -1> (x, perm)
    y = MatMul (p, w)
}
"""

LINEAR_THEN_PERMUTE = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x) => (float[N, 8] y) {
    h1 = MatMul (x, h)
    y = Gather <axis = -1> (h1, perm)
}
"""

INVERSE_PERMUTATIONS = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x) => (float[N, 8] y) {
    p = Gather <axis = -1> (x, perm)
    q = Gather <axis = -1> (p, inv)
    y = Relu (q)
}
"""

ONLINE = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x, float[8, 8] w_dynamic) => (float[N, 8] y) {
    a = MatMul (x, w_dynamic)
    r = MatMul (a, h)
    y = Relu (r)
}
"""


def _close(before, after):
    for b, a in zip(before, after):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_orthogonal_pair_cancels():
    before, after, out = before_after(model_from_text(PAIR, h=H, ht=np.ascontiguousarray(H.T)), fold_rotations)
    assert op_types(out) == ["Relu"]
    _close(before, after)


def test_rotation_merges_into_next_weight():
    before, after, out = before_after(model_from_text(ROTATE_THEN_LINEAR, h=H, w=W), fold_rotations)
    assert op_types(out) == ["MatMul"]
    _close(before, after)


def test_permutation_merges_into_weight_after():
    before, after, out = before_after(model_from_text(PERMUTE_THEN_LINEAR, perm=PERM, w=W), fold_rotations)
    assert op_types(out) == ["MatMul"]
    _close(before, after)


def test_permutation_merges_into_weight_before():
    before, after, out = before_after(model_from_text(LINEAR_THEN_PERMUTE, perm=PERM, h=H), fold_rotations)
    assert op_types(out) == ["MatMul"]
    _close(before, after)


def test_inverse_permutations_cancel():
    before, after, out = before_after(model_from_text(INVERSE_PERMUTATIONS, perm=PERM, inv=np.argsort(PERM)), fold_rotations)
    assert op_types(out) == ["Relu"]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_online_rotation_between_activations_stays():
    before, after, out = before_after(model_from_text(ONLINE, h=H), fold_rotations)
    assert op_types(out) == ["MatMul", "MatMul", "Relu"]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


# edgeq.Hadamard: the online op merges into a constant neighbour or cancels with its inverse.

HADAMARD_THEN_LINEAR = """
<ir_version: 10, opset_import: ["" : 21, "edgeq" : 1]>
g (float[N, 3, 24] x) => (float[N, 3, 5] y) {
    r = edgeq.Hadamard <size = 12> (x, signs)
    y = MatMul (r, w)
}
"""

LINEAR_THEN_HADAMARD = """
<ir_version: 10, opset_import: ["" : 21, "edgeq" : 1]>
g (float[N, 5] x) => (float[N, 16] y) {
    h1 = MatMul (x, w)
    y = edgeq.Hadamard <size = 16> (h1)
}
"""

HADAMARD_PAIR = """
<ir_version: 10, opset_import: ["" : 21, "edgeq" : 1]>
g (float[N, 16] x) => (float[N, 16] y) {
    a = edgeq.Hadamard <size = 8> (x)
    b = edgeq.Hadamard <size = 8> (a)
    y = Relu (b)
}
"""

HADAMARD_BETWEEN_ACTIVATIONS = """
<ir_version: 10, opset_import: ["" : 21, "edgeq" : 1]>
g (float[N, 16] x, float[16, 16] w_dynamic) => (float[N, 16] y) {
    a = MatMul (x, w_dynamic)
    b = edgeq.Hadamard <size = 16> (a)
    y = Relu (b)
}
"""


def _edgeq_model(text, **inits):
    from edgeq.opset import attach_functions

    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in inits.items())
    attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_hadamard_with_signs_merges_into_next_weight():
    signs = RNG.choice([-1.0, 1.0], 24).astype(np.float32)
    model = _edgeq_model(HADAMARD_THEN_LINEAR, signs=signs, w=RNG.standard_normal((24, 5)).astype(np.float32))
    before, after, out = before_after(model, fold_rotations)
    assert op_types(out) == ["MatMul"]
    _close(before, after)


def test_hadamard_merges_into_previous_weight():
    model = _edgeq_model(LINEAR_THEN_HADAMARD, w=RNG.standard_normal((5, 16)).astype(np.float32))
    before, after, out = before_after(model, fold_rotations)
    assert op_types(out) == ["MatMul"]
    _close(before, after)


def test_hadamard_pair_cancels():
    before, after, out = before_after(_edgeq_model(HADAMARD_PAIR), fold_rotations)
    assert op_types(out) == ["Relu"]
    _close(before, after)


def test_online_hadamard_stays():
    before, after, out = before_after(_edgeq_model(HADAMARD_BETWEEN_ACTIVATIONS), fold_rotations)
    assert op_types(out) == ["MatMul", "Hadamard", "Relu"]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
