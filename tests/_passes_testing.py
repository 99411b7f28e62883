"""Helpers for the pass tests: models from ONNX text plus numpy initializers, a before/after run
on onnxruntime (ops only a later stage reads run through their registered ONNX references), and
one pass run in verify mode."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.pass_manager import runnable, seeded_inputs
from edgeq.passes import run_passes  # registers every pass below the back end
from edgeq.runtime.ort import ort_session


STANDARD_HEADER = '<ir_version: 10, opset_import: ["" : 21]>'


def model_from_text(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """A checked model from ONNX text (without a ``<...>`` header: IR 10, opset 21) and numpy
    initializers; ``edgeq`` nodes get their function bodies."""
    from edgeq.opset import DOMAIN, attach_functions

    model = onnx.parser.parse_model(text if text.lstrip().startswith("<") else f"{STANDARD_HEADER}\n{text}")
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in initializers.items())
    if any(n.domain == DOMAIN for n in model.graph.node):
        attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort_session(runnable(model).SerializeToString()).run(None, feeds)


def before_after(model: onnx.ModelProto, rewrite, seed: int = 0):
    """(outputs before, outputs after, rewritten model); the input model is left unchanged."""
    feeds = seeded_inputs(model, seed)
    before = run(model, feeds)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    after_model = rewrite(copy)
    onnx.checker.check_model(after_model, full_check=True)
    return before, run(after_model, feeds), after_model


def assert_rewrites(model: onnx.ModelProto, rewrite, ops: list[str], tolerance: float = 1e-5) -> onnx.ModelProto:
    """``rewrite`` leaves ``ops`` and every output within ``tolerance`` of its scale before (0: bit
    for bit) on onnxruntime; returns the rewritten model."""
    before, after, out = before_after(model, rewrite)
    assert op_types(out) == ops
    for b, a in zip(before, after):
        if tolerance:
            assert np.abs(a - b).max() <= tolerance * np.abs(b).max()
        else:
            np.testing.assert_array_equal(a, b)
    return out


def verified(model: onnx.ModelProto, name: str, **options) -> tuple[onnx.ModelProto, float]:
    """(model after the registered pass ``name``, its max relative change on onnxruntime): the
    manager checks its graph, its guarantees and its numbers (within the pass's tolerance)."""
    out, (report,) = run_passes(model, [name], verify=True, options={name: options})
    return out, report.max_rel_change


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph.node)


S_X, S_Y, ZP_X, ZP_Y = np.float32(0.02), np.float32(0.05), 7, 100


def qdq_linear(k: int, n: int, w: np.ndarray, middle: str = "Gemm") -> onnx.ModelProto:
    """x -> Q -> DQ -> Gemm(DQ(w), b) [or Sigmoid] -> Q -> DQ -> y."""
    inits = [
        numpy_helper.from_array(np.array(S_X), "sx"), numpy_helper.from_array(np.array(ZP_X, np.uint8), "zx"),
        numpy_helper.from_array(np.array(S_Y), "sy"), numpy_helper.from_array(np.array(ZP_Y, np.uint8), "zy"),
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(n, 0.01, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(n, np.int8), "zw"),
        numpy_helper.from_array(np.linspace(-0.5, 0.5, n).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["qx"], name="quant_in"),
        helper.make_node("DequantizeLinear", ["qx", "sx", "zx"], ["dx"], name="dequant_x"),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["dw"], name="dequant_w", axis=0),
    ]
    if middle == "Gemm":
        nodes.append(helper.make_node("Gemm", ["dx", "dw", "b"], ["h"], name="fc", transB=1))
    else:
        nodes.append(helper.make_node("Sigmoid", ["dx"], ["h"], name="gate"))
        n = k
    nodes += [
        helper.make_node("QuantizeLinear", ["h", "sy", "zy"], ["qy"], name="quant_out"),
        helper.make_node("DequantizeLinear", ["qy", "sy", "zy"], ["y"], name="dequant_out"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def lowbit_linear(bits: int, k: int = 16, n: int = 6, group: int = 8, users: int = 1, seed: int = 0):
    """x [batch, k] -> ``users`` edgeq.LowBitLinear nodes on one packed weight (no function bodies
    yet) -> y0.., and the float weight [n, k] they mean."""
    import torch

    from edgeq.maths.packing import pack
    from edgeq.opset import DOMAIN, OPSET_VERSION

    rng = np.random.default_rng(seed)
    q = rng.integers(0, 1 << bits, (n, k))
    scales = rng.uniform(0.01, 0.1, (n, k // group)).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (n, k // group)).astype(np.uint8)
    packed = pack(torch.from_numpy(q), bits).numpy()
    nodes = [helper.make_node("LowBitLinear", ["x", "qw", "s", "z"], [f"y{i}"], name=f"fc{i}", domain=DOMAIN,
                              bits=bits, group_size=group) for i in range(users)]
    graph = helper.make_graph(
        nodes, "lowbit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", n]) for i in range(users)],
        [numpy_helper.from_array(packed, "qw"), numpy_helper.from_array(scales, "s"), numpy_helper.from_array(zeros, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    weight = (q - np.repeat(zeros, group, axis=1)) * np.repeat(scales, group, axis=1)
    return model, weight.astype(np.float32)
