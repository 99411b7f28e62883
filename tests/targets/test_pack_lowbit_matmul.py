"""pack_lowbit_matmul: a signed int4 blocked DequantizeLinear + MatMul becomes one PackedLinear
(weights re-packed unsigned, zero point shifted alike) with the same outputs on onnxruntime
through its reference, edgeq.LowBitLinear (1e-5 of the scale); an int4 weight read by anything
but MatMul's B input stays DequantizeLinear, widened to int8."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto, numpy_helper

from edgeq.targets.pre_tvm.importer_ops import PACKED_LINEAR  # (importing edgeq.targets registers the pre_tvm passes)
from _passes_testing import count, model_from_text, verified

K, N, BLOCK = 16, 6, 8
RNG = np.random.default_rng(6)

MATMUL = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[M, 16] x) => (float[M, 6] y) {
    w = DequantizeLinear <axis = 0, block_size = 8> (wq, ws, wz)
    y = MatMul (x, w)
}
"""

ADD = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[16, 6] x) => (float[16, 6] y) {
    w = DequantizeLinear <axis = 0, block_size = 8> (wq, ws, wz)
    y = Add (x, w)
}
"""


def _weights() -> dict:
    return {"wq": RNG.integers(-8, 8, (K, N)).astype(ml_dtypes.int4),
            "ws": RNG.uniform(0.01, 0.1, (K // BLOCK, N)).astype(np.float32),
            "wz": RNG.integers(-8, 8, (K // BLOCK, N)).astype(ml_dtypes.int4)}


def test_int4_dequantize_matmul_packs():
    out, change = verified(model_from_text(MATMUL, **_weights()), "pack_lowbit_matmul")
    assert (count(out, PACKED_LINEAR), count(out, "DequantizeLinear"), count(out, "MatMul")) == (1, 0, 0)
    packed = {t.name: t for t in out.graph.initializer}[out.graph.node[0].input[1]]
    assert packed.data_type == TensorProto.UINT8 and list(packed.dims) == [N, K // 2]
    assert change <= 1e-5


def test_other_readers_keep_dequantize_linear_widened():
    out, change = verified(model_from_text(ADD, **_weights()), "pack_lowbit_matmul")
    assert (count(out, PACKED_LINEAR), count(out, "DequantizeLinear"), change) == (0, 1, 0.0)
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.INT8, TensorProto.FLOAT}
    assert numpy_helper.to_array(out.graph.initializer[0]).dtype == np.int8


def test_scales_that_are_float16_values_stored_as_float16():
    """Scales that are all exactly float16 values (a quantizer that keeps float16 scales) are
    stored in half the bytes; the outputs are unchanged. Others stay float32 (the test above)."""
    weights = _weights()
    weights["ws"] = weights["ws"].astype(np.float16).astype(np.float32)
    out, change = verified(model_from_text(MATMUL, **weights), "pack_lowbit_matmul")
    scales = {t.name: t for t in out.graph.initializer}[out.graph.node[0].input[2]]
    assert scales.data_type == TensorProto.FLOAT16
    assert np.array_equal(numpy_helper.to_array(scales).astype(np.float32), weights["ws"].T)
    assert change <= 1e-5
    kept = {t.name: t for t in verified(model_from_text(MATMUL, **_weights()), "pack_lowbit_matmul")[0].graph.initializer}
    assert kept[out.graph.node[0].input[2]].data_type == TensorProto.FLOAT
