"""constant_folding: an all-constant subgraph becomes one initializer with the same outputs (bit
for bit); a DequantizeLinear of int8 weights is never folded (the weights stay int8); nodes that
read a graph input stay."""

from __future__ import annotations

import numpy as np
import onnx

from edgeq.passes.constant_folding import fold_constants
from _passes_testing import assert_rewrites, model_from_text

CONSTANT_CHAIN = """
g (float[N, 4] x) => (float[N, 4] y) {
    two = Constant <value = float {2.0}> ()
    scaled = Mul (w, two)
    shifted = Add (scaled, b)
    y = MatMul (x, shifted)
}
"""

QDQ_WEIGHT = """
g (float[N, 4] x) => (float[N, 4] y) {
    wf = DequantizeLinear <axis = 0> (wq, ws, wz)
    y = MatMul (x, wf)
}
"""


def test_constant_chain_folds_to_one_initializer():
    rng = np.random.default_rng(3)
    model = model_from_text(CONSTANT_CHAIN, w=rng.standard_normal((4, 4)).astype(np.float32), b=rng.standard_normal((4, 4)).astype(np.float32))
    assert_rewrites(model, fold_constants, ["MatMul"], tolerance=0)


def test_dequantize_of_int8_weights_is_kept():
    model = model_from_text(QDQ_WEIGHT, wq=np.arange(16, dtype=np.int8).reshape(4, 4), ws=np.full(4, 0.1, np.float32), wz=np.zeros(4, np.int8))
    out = assert_rewrites(model, fold_constants, ["DequantizeLinear", "MatMul"], tolerance=0)
    assert {t.data_type for t in out.graph.initializer} == {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT}
