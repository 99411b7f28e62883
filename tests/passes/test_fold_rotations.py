"""fold_rotations: an orthogonal pair (H then H^T) cancels, a rotation merges into the next
weight, a Gather permutation merges into the weight before or after it, two inverse
permutations cancel -- outputs within 1e-5 of their scale; a rotation between two activations
(no constant neighbour) stays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard

from edgeq.passes.fold_rotations import fold_rotations
from _passes_testing import assert_rewrites, model_from_text

RNG = np.random.default_rng(2)
K = 8
H = (hadamard(K) / np.sqrt(K)).astype(np.float32)  # orthogonal and symmetric
W = RNG.standard_normal((K, 5)).astype(np.float32)
PERM = RNG.permutation(K).astype(np.int64)

PAIR = """
g (float[N, 8] x) => (float[N, 8] y) {
    r = MatMul (x, h)
    back = MatMul (r, ht)
    y = Relu (back)
}
"""

ROTATE_THEN_LINEAR = """
g (float[N, 8] x) => (float[N, 5] y) {
    r = MatMul (x, h)
    y = MatMul (r, w)
}
"""

PERMUTE_THEN_LINEAR = """
g (float[N, 8] x) => (float[N, 5] y) {
    p = Gather <axis = -1> (x, perm)
    y = MatMul (p, w)
}
"""

LINEAR_THEN_PERMUTE = """
g (float[N, 8] x) => (float[N, 8] y) {
    h1 = MatMul (x, h)
    y = Gather <axis = -1> (h1, perm)
}
"""

INVERSE_PERMUTATIONS = """
g (float[N, 8] x) => (float[N, 8] y) {
    p = Gather <axis = -1> (x, perm)
    q = Gather <axis = -1> (p, inv)
    y = Relu (q)
}
"""

ONLINE = """
g (float[N, 8] x, float[8, 8] w_dynamic) => (float[N, 8] y) {
    a = MatMul (x, w_dynamic)
    r = MatMul (a, h)
    y = Relu (r)
}
"""


@pytest.mark.parametrize("text, inits, ops, tolerance", [
    (PAIR, {"h": H, "ht": np.ascontiguousarray(H.T)}, ["Relu"], 1e-5),  # an orthogonal pair cancels
    (ROTATE_THEN_LINEAR, {"h": H, "w": W}, ["MatMul"], 1e-5),  # a rotation merges into the next weight
    (PERMUTE_THEN_LINEAR, {"perm": PERM, "w": W}, ["MatMul"], 1e-5),  # a permutation into the weight after
    (LINEAR_THEN_PERMUTE, {"perm": PERM, "h": H}, ["MatMul"], 1e-5),  # ... and into the weight before
    (INVERSE_PERMUTATIONS, {"perm": PERM, "inv": np.argsort(PERM)}, ["Relu"], 0),
    (ONLINE, {"h": H}, ["MatMul", "MatMul", "Relu"], 0),  # between two activations: stays
], ids=["pair", "rotate-linear", "permute-linear", "linear-permute", "inverse-permutations", "online-stays"])
def test_fold(text, inits, ops, tolerance):
    assert_rewrites(model_from_text(text, **inits), fold_rotations, ops, tolerance)


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


@pytest.mark.parametrize("text, inits, ops, tolerance", [
    (HADAMARD_THEN_LINEAR, {"signs": RNG.choice([-1.0, 1.0], 24).astype(np.float32),
                            "w": RNG.standard_normal((24, 5)).astype(np.float32)}, ["MatMul"], 1e-5),
    (LINEAR_THEN_HADAMARD, {"w": RNG.standard_normal((5, 16)).astype(np.float32)}, ["MatMul"], 1e-5),
    (HADAMARD_PAIR, {}, ["Relu"], 1e-5),
    (HADAMARD_BETWEEN_ACTIVATIONS, {}, ["MatMul", "Hadamard", "Relu"], 0),  # online: stays
], ids=["signs-into-next-weight", "into-previous-weight", "pair-cancels", "online-stays"])
def test_fold_hadamard(text, inits, ops, tolerance):
    assert_rewrites(model_from_text(text, **inits), fold_rotations, ops, tolerance)
