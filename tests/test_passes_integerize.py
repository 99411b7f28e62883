"""integerize on inline QDQ graphs: the rewrite's integers equal the numpy formula, the overflow
proof fails on a layer that can overflow (naming it), an op with no integer form is named with
its op type, and keep_float leaves that region in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.opset.dyadic import accumulator_scale, bias_int32, dyadic_requantize_reference, rescale_multiplier
from edgeq.passes.integer_check import float_ops_in_integer_region
from edgeq.passes.integerize import IntegerizeError, integerize
from edgeq.runtime.ort import ort_session
from _passes_testing import S_X, S_Y, ZP_X, ZP_Y, qdq_linear as _qdq_linear

def test_gemm_becomes_matmulinteger_with_exact_integers():
    rng = np.random.default_rng(0)
    k, n = 48, 6
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    model = integerize(_qdq_linear(k, n, w))
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["QuantizeLinear", "MatMulInteger", "Add", "DyadicRequantize", "Cast", "DequantizeLinear"]
    assert float_ops_in_integer_region(model) == []
    x = rng.uniform(-2, 2, (32, k)).astype(np.float32)
    y = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    # the same integers from the formula
    qx = np.clip(np.rint(x / S_X) + ZP_X, 0, 255).astype(np.int64)
    acc = (qx - ZP_X) @ w.T.astype(np.int64) + bias_int32(np.linspace(-0.5, 0.5, n).astype(np.float32), S_X, np.full(n, 0.01, np.float32))
    b, c = rescale_multiplier(accumulator_scale(S_X, np.full(n, 0.01, np.float32)), S_Y)
    qy = dyadic_requantize_reference(acc, b, c, ZP_Y, 0, 255)
    np.testing.assert_array_equal(y, ((qy.astype(np.float32) - ZP_Y) * S_Y))
    # and close to the float QDQ graph (one output step, from the dyadic rounding of the bias)
    y_qdq = ort_session(_qdq_linear(k, n, w).SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(y - y_qdq).max() <= S_Y * 1.0001


def test_overflow_proof_names_the_layer():
    k, n = 70_000, 2  # 255 * 127 * 70000 > 2^31
    w = np.full((n, k), 127, np.int8)
    with pytest.raises(IntegerizeError, match=r"node 'fc' \(Gemm\).*overflow"):
        integerize(_qdq_linear(k, n, w))


def test_op_without_integer_form_is_named_and_can_stay_float():
    k = 8
    model = _qdq_linear(k, k, np.ones((k, k), np.int8), middle="Sigmoid")
    with pytest.raises(IntegerizeError, match=r"node 'gate' \(Sigmoid\) has no integer form.*keep_float"):
        integerize(model)
    kept = integerize(model, keep_float=["gate"])
    assert [n.op_type for n in kept.graph.node] == [n.op_type for n in model.graph.node if n.op_type != "DequantizeLinear" or n.name != "dequant_w"]
    x = np.linspace(-3, 3, 4 * k, dtype=np.float32).reshape(4, k)
    a = ort_session(kept.SerializeToString()).run(None, {"x": x})[0]
    b = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)


def test_float_graph_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "f",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(IntegerizeError, match="not a QDQ graph"):
        integerize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def test_int4_weight_initializers_are_integerized():
    import ml_dtypes

    rng = np.random.default_rng(5)
    w8 = rng.integers(-7, 8, (6, 32)).astype(np.int8)
    qdq8 = _qdq_linear(32, 6, w8)
    qdq4 = _qdq_linear(32, 6, w8)
    w_init = next(t for t in qdq4.graph.initializer if t.name == "w")
    w_init.CopyFrom(onnx.numpy_helper.from_array(w8.astype(ml_dtypes.int4), "w"))
    x = rng.uniform(-2, 2, (16, 32)).astype(np.float32)
    a = ort_session(integerize(qdq4).SerializeToString()).run(None, {"x": x})[0]
    b = ort_session(integerize(qdq8).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)


def test_float_output_is_refused_naming_its_producer(tmp_path, digits, digits_model):
    import edgeq

    qmodel = edgeq.quantize(digits_model, "w8a8", calib=digits.x_train[:256])  # float logits
    path = edgeq.export(qmodel, digits.x_test[:1], tmp_path / "w8a8.onnx")
    with pytest.raises(IntegerizeError, match=r"graph output 'output' is not a DequantizeLinear.*\(Gemm\)"):
        integerize(onnx.load(str(path)))
