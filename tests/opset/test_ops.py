"""Each edgeq op's function body, run by stock onnxruntime, equals its numpy reference and the
torch custom op the exporter translates into it.

Tolerance: float32 results agree within 1e-5 of the output's scale (max |reference|); only the
summation order differs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeq.errors import QuantizationError
from edgeq.maths.packing import pack
from edgeq.opset import DOMAIN, attach_functions, edgeq_ops
from edgeq.opset.hadamard import dense_hadamard, factorization, hadamard
from edgeq.opset.lowbit_linear import lowbit_linear
from edgeq.opset.lowrank_linear import lowrank_linear
from edgeq.runtime.ort import ort_session

TOL = 1e-5
OPSET = 21


def run_single_node(op_type: str, inputs: dict[str, np.ndarray], attrs: dict, opset: int = OPSET) -> tuple[np.ndarray, onnx.ModelProto]:
    """One edgeq node whose first input is a graph input and the rest initializers."""
    (x_name, x), *weights = inputs.items()
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    node = helper.make_node(op_type, list(inputs), ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "single", [helper.make_tensor_value_info(x_name, elem, list(x.shape))],
        [helper.make_tensor_value_info("y", elem, [None] * x.ndim)],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    session = ort_session(model.SerializeToString())
    return session.run(None, {x_name: x})[0], model


def assert_close(actual, expected, tol=TOL):
    scale = max(float(np.abs(expected).max()), 1e-12)
    assert np.abs(actual.astype(np.float64) - expected).max() <= tol * scale


def lowbit_inputs(rng, n, k, bits, group):
    q = rng.integers(0, 1 << bits, (n, k))
    return {
        "qweight": pack(torch.from_numpy(q), bits).numpy(),
        "scales": (rng.random((n, k // group)) * 0.1 + 0.01).astype(np.float16),
        "zeros": rng.integers(0, 1 << bits, (n, k // group)).astype(np.uint8),
    }


def check_linear_op(op_type, torch_op, inputs, bits, group) -> tuple[np.ndarray, onnx.ModelProto]:
    """The op's function body on onnxruntime and its torch custom op both equal its numpy
    reference on ``inputs`` (x, the packed weight, any factors, then an optional "bias");
    returns (the reference's output, the single-node model)."""
    y, model = run_single_node(op_type, inputs, {"bits": bits, "group_size": group})
    expected = edgeq_ops()[op_type].reference(*inputs.values(), bits=bits, group_size=group)
    assert_close(y, expected)
    *operands, bias = [torch.from_numpy(v) for v in inputs.values()] + ([] if "bias" in inputs else [None])
    assert_close(torch_op(*operands, bias, bits, group).numpy(), expected)
    return expected, model


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_lowbit_linear(bits, bias):
    rng = np.random.default_rng(bits)
    n, k, group = 24, 96, 32
    x = rng.standard_normal((2, 5, k)).astype(np.float32)
    inputs = {"x": x, **lowbit_inputs(rng, n, k, bits, group)}
    if bias:
        inputs["bias"] = rng.standard_normal(n).astype(np.float32)
    _, model = check_linear_op("LowBitLinear", lowbit_linear, inputs, bits, group)
    # the overload names the body: one function per distinct attribute set
    assert [f.overload for f in model.functions] == [model.graph.node[0].overload]


def test_lowbit_linear_reference_is_the_layer_formula():
    """The numpy reference dequantizes exactly like WeightOnlyLinear (checked on integers)."""
    q = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    ref = edgeq_ops()["LowBitLinear"].reference(
        np.eye(8, dtype=np.float32), pack(torch.from_numpy(q), 3).numpy(),
        np.array([[0.5]], np.float16), np.array([[4]], np.uint8), bits=3, group_size=8)
    np.testing.assert_array_equal(ref[:, 0], (q[0] - 4) * 0.5)


@pytest.mark.parametrize("size", [12, 20, 28, 64, 96, 160, 224, 576, 1536, 4096])
def test_hadamard_factors_are_small_and_orthonormal(size):
    h = dense_hadamard(size)
    np.testing.assert_allclose(h @ h.T, np.eye(size), atol=1e-12)
    assert all(f <= 64 for f in factorization(size)) and np.prod(factorization(size)) == size


@pytest.mark.parametrize("size,dim", [(64, 64), (12, 48), (20, 20), (28, 56), (576, 576), (1536, 1536), (32, 128)])
@pytest.mark.parametrize("signed", [False, True])
def test_hadamard(size, dim, signed):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((3, 2, dim)).astype(np.float32)
    inputs = {"x": x}
    if signed:
        inputs["signs"] = rng.choice([-1.0, 1.0], dim).astype(np.float32)
    y, model = run_single_node("Hadamard", inputs, {"size": size})
    expected = edgeq_ops()["Hadamard"].reference(*inputs.values(), size=size)
    assert_close(y, expected)
    torch_y = hadamard(torch.from_numpy(x), torch.from_numpy(inputs["signs"]) if signed else None, size).numpy()
    assert_close(torch_y, expected)
    # factored, never dense: the largest constant in the body is one small factor
    largest = max(int(np.prod(a.t.dims)) for n in model.functions[0].node for a in n.attribute if a.name == "value")
    assert largest <= 64 * 64


def test_hadamard_rejects_unsupported_size():
    with pytest.raises(QuantizationError, match="size 36"):
        factorization(36)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_lowrank_linear(bits, bias):
    rng = np.random.default_rng(10 + bits)
    n, k, group, rank = 32, 64, 32, 8
    x = rng.standard_normal((4, k)).astype(np.float32)
    inputs = {"x": x, **lowbit_inputs(rng, n, k, bits, group),
              "u": rng.standard_normal((k, rank)).astype(np.float16),
              "v": rng.standard_normal((rank, n)).astype(np.float16)}
    if bias:
        inputs["bias"] = rng.standard_normal(n).astype(np.float32)
    expected, _ = check_linear_op("LowRankLinear", lowrank_linear, inputs, bits, group)
    # the branch matters: without it the result is measurably different
    base = edgeq_ops()["LowBitLinear"].reference(x, *t_np(inputs, ["qweight", "scales", "zeros"]), inputs.get("bias"), bits=bits, group_size=group)
    assert np.abs(base - expected).max() > 100 * TOL * np.abs(expected).max()


def t_np(inputs, names):
    return [inputs[n] for n in names]


@pytest.mark.parametrize("opset", [18, 21, 25, 28])
def test_bodies_build_at_every_supported_opset(opset):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    inputs = {"x": x, **lowbit_inputs(rng, 8, 64, 4, 32)}
    y, model = run_single_node("LowBitLinear", inputs, {"bits": 4, "group_size": 32}, opset=opset)
    assert model.functions[0].opset_import[0].version == opset
    assert_close(y, edgeq_ops()["LowBitLinear"].reference(*inputs.values(), bits=4, group_size=32))


def test_unknown_edgeq_op_is_refused():
    from edgeq.errors import ExportError

    node = helper.make_node("Mystery", ["x"], ["y"], domain=DOMAIN, name="n0")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ExportError, match="'n0'.*edgeq.Mystery"):
        attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dequantize_packed_op_runs_eagerly(bits):
    """``edgeq::dequantize_packed`` (a weight-only conv's weight) called outside export equals the
    maths it wraps bit for bit (it once called itself by name and recursed)."""
    from edgeq.maths.groups import dequantize_packed

    rng = np.random.default_rng(bits)
    packed = {k: torch.from_numpy(v) for k, v in lowbit_inputs(rng, 6, 64, bits, 32).items()}
    args = (packed["qweight"], packed["scales"].float(), packed["zeros"], bits, 32)
    assert torch.equal(torch.ops.edgeq.dequantize_packed(*args), dequantize_packed(*args))
