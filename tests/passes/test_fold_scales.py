"""fold_scales: RMSNorm-style gamma (Mul), SmoothQuant (Div), LayerNormalization gamma and
RMSNormalization gamma fold into the following MatMul weights, with the same outputs (1e-5 of
the output scale); a scale that also feeds a non-MatMul consumer stays."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.passes.fold_scales import fold_scales
from _passes_testing import assert_rewrites, model_from_text

RNG = np.random.default_rng(1)
K, N = 6, 5
W1 = RNG.standard_normal((K, N)).astype(np.float32)
W2 = RNG.standard_normal((K, N)).astype(np.float32)
G = RNG.uniform(0.5, 2.0, K).astype(np.float32)
BETA = RNG.standard_normal(K).astype(np.float32)

MUL_TWO_MATMULS = """
g (float[N, 3, 6] x) => (float[N, 3, 5] y1, float[N, 3, 5] y2) {
    s = Mul (x, gamma)
    y1 = MatMul (s, w1)
    y2 = MatMul (s, w2)
}
"""

SMOOTHQUANT_DIV = """
g (float[N, 6] x) => (float[N, 5] y) {
    s = Div (x, smooth)
    y = MatMul (s, w1)
}
"""

LAYERNORM = """
g (float[N, 6] x) => (float[N, 5] y) {
    n = LayerNormalization <axis = -1> (x, gamma, beta)
    y = MatMul (n, w1)
}
"""

RMSNORM = """
<ir_version: 10, opset_import: ["" : 23]>
g (float[N, 6] x) => (float[N, 5] y) {
    n = RMSNormalization <axis = -1> (x, gamma)
    y = MatMul (n, w1)
}
"""

SHARED = """
g (float[N, 6] x) => (float[N, 5] y, float[N, 6] r) {
    s = Mul (x, gamma)
    y = MatMul (s, w1)
    r = Relu (s)
}
"""


@pytest.mark.parametrize("text, inits, ops, tolerance", [
    (MUL_TWO_MATMULS, {"gamma": G, "w1": W1, "w2": W2}, ["MatMul", "MatMul"], 1e-5),  # norm gamma into both
    (SMOOTHQUANT_DIV, {"smooth": G, "w1": W1}, ["MatMul"], 1e-5),
    (RMSNORM, {"gamma": G, "w1": W1}, ["RMSNormalization", "MatMul"], 1e-5),
    (SHARED, {"gamma": G, "w1": W1}, ["Mul", "MatMul", "Relu"], 0),  # a non-MatMul user: stays
], ids=["mul-two-matmuls", "smoothquant-div", "rmsnormalization", "shared-stays"])
def test_fold(text, inits, ops, tolerance):
    assert_rewrites(model_from_text(text, **inits), fold_scales, ops, tolerance)


def test_layernorm_gamma_folds_and_beta_is_rescaled():
    out = assert_rewrites(model_from_text(LAYERNORM, gamma=G, beta=BETA, w1=W1), fold_scales, ["LayerNormalization", "MatMul"])
    gamma = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    np.testing.assert_array_equal(np.frombuffer(gamma.raw_data, np.float32), np.ones(K, np.float32))
