"""tied_matmul: ``MatMul(X, Transpose(W))`` with W a 2-D initializer becomes one
LinearTransposedWeight reading W once (the Transpose goes), same outputs on onnxruntime through
its ONNX reference (1e-6 of the scale); a Transpose of an activation, or one with another
permutation, stays."""

from __future__ import annotations

import numpy as np
import pytest

import edgeq.targets  # noqa: F401  (registers the pre_tvm passes)
from _passes_testing import count, model_from_text, verified

RNG = np.random.default_rng(5)

TIED = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x) => (float[N, 12] y, float[N, 12] z) {
    wt = Transpose <perm = [1, 0]> (table)
    y = MatMul (x, wt)
    h = Relu (x)
    z = MatMul (h, wt)
}
"""

ACTIVATION = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[N, 8] x, float[12, 8] w) => (float[N, 12] y) {
    wt = Transpose <perm = [1, 0]> (w)
    y = MatMul (x, wt)
}
"""

BATCHED = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2, N, 8] x) => (float[2, N, 12] y) {
    wt = Transpose <perm = [0, 2, 1]> (table)
    y = MatMul (x, wt)
}
"""


def test_both_readers_of_the_tied_table_rewrite():
    out, change = verified(model_from_text(TIED, table=RNG.standard_normal((12, 8)).astype(np.float32)), "tied_matmul")
    assert (count(out, "LinearTransposedWeight"), count(out, "Transpose"), count(out, "MatMul")) == (2, 0, 0)
    assert change <= 1e-6


@pytest.mark.parametrize("text, table", [(ACTIVATION, None), (BATCHED, (2, 12, 8))])
def test_other_transposes_stay(text, table):
    inits = {"table": RNG.standard_normal(table).astype(np.float32)} if table else {}
    out, change = verified(model_from_text(text, **inits), "tied_matmul")
    assert (count(out, "Transpose"), count(out, "LinearTransposedWeight"), change) == (1, 0, 0.0)
