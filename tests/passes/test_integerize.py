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


# -- MobileNet ops: Hardswish, Hardsigmoid, the squeeze-excite multiply, global average pooling ---

def _qdq_graph(op: str, inputs: dict[str, tuple[list, float, int]], out_qp: tuple[float, int], out_shape: list,
               extra_inits=(), **attrs) -> onnx.ModelProto:
    """Each input -> Q -> DQ, then ``op`` (named 'op'), then Q -> DQ -> y (uint8 throughout)."""
    from onnx import numpy_helper

    nodes, inits, graph_inputs, dq = [], list(extra_inits), [], []
    for name, (shape, scale, zp) in inputs.items():
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"s_{name}"),
                  numpy_helper.from_array(np.array(zp, np.uint8), f"z_{name}")]
        nodes += [helper.make_node("QuantizeLinear", [name, f"s_{name}", f"z_{name}"], [f"q_{name}"]),
                  helper.make_node("DequantizeLinear", [f"q_{name}", f"s_{name}", f"z_{name}"], [f"d_{name}"])]
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        dq.append(f"d_{name}")
    inits += [numpy_helper.from_array(np.array(out_qp[0], np.float32), "s_y"),
              numpy_helper.from_array(np.array(out_qp[1], np.uint8), "z_y")]
    nodes += [helper.make_node(op, dq + [i.name for i in extra_inits], ["h"], name="op", **attrs),
              helper.make_node("QuantizeLinear", ["h", "s_y", "z_y"], ["q_y"]),
              helper.make_node("DequantizeLinear", ["q_y", "s_y", "z_y"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


S_GATE, ZP_GATE = np.float32(0.04), 128  # inputs from -5.12 to 5.08: both knees of relu6(x + 3)


@pytest.mark.parametrize("op, out_qp", [("HardSwish", (0.025, 16)), ("HardSigmoid", (0.004, 0))])
def test_hard_gates_equal_the_numpy_integer_formula_on_every_input_code(op, out_qp):
    """Every uint8 input code: onnxruntime on the integerized graph == the numpy formula == the
    PyTorch integer reference, and within one output step of the float QDQ graph."""
    import torch

    from edgeq.opset.dyadic import hard_gate_offsets, hardsigmoid_multiplier, hardswish_multiplier
    from edgeq.quant.dyadic import IntHardGate, QParams

    attrs = {"alpha": 1 / 6, "beta": 0.5} if op == "HardSigmoid" else {}
    model = _qdq_graph(op, {"x": ([1, 256], S_GATE, ZP_GATE)}, out_qp, [1, 256], **attrs)
    integer = integerize(model)
    assert float_ops_in_integer_region(integer) == []
    assert "Clip" in [n.op_type for n in integer.graph.node] and op not in [n.op_type for n in integer.graph.node]
    codes = np.arange(256, dtype=np.int64)
    x = ((codes - ZP_GATE) * S_GATE).astype(np.float32).reshape(1, 256)
    got = ort_session(integer.SerializeToString()).run(None, {"x": x})[0]
    # the formula, written out
    three, six = hard_gate_offsets(S_GATE)
    assert (three, six) == (75, 150)
    gate = np.clip(codes - ZP_GATE + three, 0, six)
    acc, (b, c) = ((codes - ZP_GATE) * gate, hardswish_multiplier(S_GATE, out_qp[0])) if op == "HardSwish" else \
        (gate, hardsigmoid_multiplier(S_GATE, out_qp[0]))
    q = dyadic_requantize_reference(acc, b, c, out_qp[1], 0, 255)
    np.testing.assert_array_equal(got[0], (q.astype(np.float32) - out_qp[1]) * np.float32(out_qp[0]))
    reference = IntHardGate(QParams(float(S_GATE), ZP_GATE), QParams(out_qp[0], out_qp[1]), swish=op == "HardSwish")
    np.testing.assert_array_equal(reference(torch.from_numpy(codes)).numpy(), q)
    float_qdq = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(got - float_qdq).max() <= out_qp[0] * 1.0001


def test_squeeze_excite_multiply_and_global_pool_are_exact():
    """x * gate (gate [N, C, 1, 1] broadcast over H, W) and a mean over H, W: integers equal the
    formula: (q_a - z_a)(q_b - z_b) rescaled by S_a S_b / S_y; the plane's sum by S_x / (H W S_y)."""
    from onnx import numpy_helper

    from edgeq.opset.dyadic import product_multiplier

    rng = np.random.default_rng(3)
    mul = integerize(_qdq_graph("Mul", {"a": ([2, 4, 3, 5], 0.03, 90), "g": ([2, 4, 1, 1], 1 / 255, 0)},
                                (0.03, 90), [2, 4, 3, 5]))
    a = rng.uniform(-2.7, 4.9, (2, 4, 3, 5)).astype(np.float32)
    g = rng.uniform(0, 1, (2, 4, 1, 1)).astype(np.float32)
    got = ort_session(mul.SerializeToString()).run(None, {"a": a, "g": g})[0]
    qa = np.clip(np.rint(a / np.float32(0.03)) + 90, 0, 255).astype(np.int64)
    qg = np.clip(np.rint(g / np.float32(1 / 255)), 0, 255).astype(np.int64)
    b, c = product_multiplier(np.float32(0.03), np.float32(1 / 255), np.float32(0.03))
    q = dyadic_requantize_reference((qa - 90) * qg, b, c, 90, 0, 255)
    np.testing.assert_array_equal(got, (q.astype(np.float32) - 90) * np.float32(0.03))

    axes = numpy_helper.from_array(np.array([-2, -1], np.int64), "axes")
    pool = integerize(_qdq_graph("ReduceMean", {"x": ([2, 4, 3, 5], 0.03, 90)}, (0.01, 128), [2, 4, 1, 1], [axes]))
    assert "ReduceSum" in [n.op_type for n in pool.graph.node] and float_ops_in_integer_region(pool) == []
    got = ort_session(pool.SerializeToString()).run(None, {"x": a})[0]
    b, c = rescale_multiplier(np.float32(0.03), np.float32(0.01), count=15)
    q = dyadic_requantize_reference((qa - 90).sum(axis=(2, 3), keepdims=True), b, c, 128, 0, 255)
    np.testing.assert_array_equal(got, (q.astype(np.float32) - 128) * np.float32(0.01))


def test_other_hard_sigmoids_and_means_are_refused_naming_the_node():
    from onnx import numpy_helper

    keras = _qdq_graph("HardSigmoid", {"x": ([1, 8], S_GATE, ZP_GATE)}, (0.004, 0), [1, 8], alpha=0.2, beta=0.5)
    with pytest.raises(IntegerizeError, match=r"node 'op' \(HardSigmoid\) has no integer form.*alpha 1/6"):
        integerize(keras)
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    channel_mean = _qdq_graph("ReduceMean", {"x": ([2, 4, 3, 5], 0.03, 90)}, (0.01, 128), [2, 1, 3, 5], [axes])
    with pytest.raises(IntegerizeError, match=r"node 'op' \(ReduceMean\) has no integer form.*axes 2, 3"):
        integerize(channel_mean)


def test_relu6_clip_becomes_integer_bounds():
    """DQ -> Clip(0, 6) -> Q: a requantize clipped to [z_y, z_y + rint(6/S_y)] (here inside uint8)."""
    from onnx import numpy_helper

    bounds = [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    model = _qdq_graph("Clip", {"x": ([1, 256], 0.05, 60)}, (0.03, 20), [1, 256], bounds)
    integer = integerize(model)
    assert float_ops_in_integer_region(integer) == []
    requant = next(n for n in integer.graph.node if n.op_type == "DyadicRequantize")
    assert {a.name: a.i for a in requant.attribute} == {"lo": 20, "hi": 220}  # 20 + rint(6 / 0.03)
    codes = np.arange(256)
    x = ((codes - 60) * np.float32(0.05)).astype(np.float32).reshape(1, 256)
    got = ort_session(integer.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, ort_session(model.SerializeToString()).run(None, {"x": x})[0])
