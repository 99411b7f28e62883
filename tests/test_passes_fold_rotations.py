"""fold_rotations: an orthogonal pair (H then H^T) cancels, a rotation merges into the next
weight, a Gather permutation merges into the weight before or after it, two inverse
permutations cancel -- outputs within 1e-5 of their scale; a rotation between two activations
(no constant neighbour) stays."""

from __future__ import annotations

import numpy as np
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
