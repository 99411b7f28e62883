"""QDQ convolutions keep their 8-bit weights: ``DequantizeLinear(int8 weight) → Conv`` becomes
one ``QConv`` kernel that dequantizes inside the reduction (before/after), matches onnxruntime
within float rounding (1e-5 of the output scale), and the artifact holds the int8 bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets.importer import prepare

OUT, IN, GROUPS = 16, 8, 2


def _model(auto_pad: str | None = None, per_channel: bool = True, bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (OUT, IN // GROUPS, 3, 3)).astype(np.int8)
    scale = rng.uniform(0.01, 0.05, OUT if per_channel else ()).astype(np.float32)
    zero = rng.integers(-5, 5, OUT if per_channel else ()).astype(np.int8)
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(zero, "w_zero"),
             numpy_helper.from_array(rng.standard_normal(OUT).astype(np.float32), "bias")]
    conv_attrs = {"group": GROUPS, "strides": [2, 1], "dilations": [1, 2], "kernel_shape": [3, 3]}
    # onnxruntime takes SAME padding only without dilation
    conv_attrs.update({"auto_pad": auto_pad, "dilations": [1, 1]} if auto_pad else {"pads": [1, 0, 2, 1]})
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"] + (["bias"] if bias else []), ["y"], name="conv", **conv_attrs)]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN, 9, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _compile_and_compare(model, tmp_path):
    path = tmp_path / "qdq_conv.onnx"
    onnx.save(model, path)
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path)
    x = np.random.default_rng(1).standard_normal((3, IN, 9, 10)).astype(np.float32)
    expect = ort_session(path).run(None, {"x": x})[0]
    got = TvmExecutor(art.path).run([x])[0]
    assert got.shape == expect.shape
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
    return art


@pytest.mark.parametrize("per_channel,bias", [(True, True), (False, False)])
def test_qdq_conv_keeps_int8_weights(tmp_path, per_channel, bias):
    model = _model(per_channel=per_channel, bias=bias)
    before = [n.op_type for n in model.graph.node]
    after = [n.op_type for n in prepare(model).graph.node]
    assert (before, after) == (["DequantizeLinear", "Conv"], ["QConv"])
    art = _compile_and_compare(model, tmp_path)
    weights = OUT * (IN // GROUPS) * 9  # int8 bytes; a float32 copy would be 4x
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes < 2 * weights, (art.weight_bytes, art.onnx_weight_bytes)


def test_auto_pad_conv_is_left_to_the_float_path(tmp_path):
    """SAME padding is not lowered by QConv: the DQ stays (folded to float at compile), still correct."""
    model = _model(auto_pad="SAME_UPPER")
    assert [n.op_type for n in prepare(model).graph.node] == ["DequantizeLinear", "Conv"]
    _compile_and_compare(model, tmp_path)


@pytest.mark.parametrize("per_channel,bias", [(True, True), (False, False)])
def test_qdq_conv_pass_is_verified_on_onnxruntime(per_channel, bias):
    """The ``qdq_conv`` pass alone, in verify mode: QConv runs as its ONNX reference (DQ + Conv)."""
    from _passes_testing import count, verified

    out, change = verified(_model(per_channel=per_channel, bias=bias), "qdq_conv")
    assert (count(out, "QConv"), count(out, "DequantizeLinear")) == (1, 0) and change <= 1e-6
    unchanged, _ = verified(_model(auto_pad="SAME_UPPER"), "qdq_conv")
    assert count(unchanged, "QConv") == 0
