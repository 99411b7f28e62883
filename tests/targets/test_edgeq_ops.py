"""edgeq-domain ops through TVM, before (onnxruntime running the op's function body) and after
(the compiled host artifact): LowBitLinear and LowRankLinear keep their weights packed, Hadamard
imports through its flat factored body."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.maths.packing import pack
from edgeq.opset import attach_functions
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets import compile as compile_model

K, N, RANK, GROUP = 128, 64, 8, 32


def _model(node, inits, k_in, n_out):
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    onnx.checker.check_model(model, full_check=True)
    return model


def _packed(bits, seed):
    rng = np.random.default_rng(seed)
    q = torch.from_numpy(rng.integers(0, 1 << bits, (N, K)))
    return {
        "qweight": pack(q, bits).numpy(),
        "scales": rng.uniform(0.01, 0.05, (N, K // GROUP)).astype(np.float32),
        "zeros": rng.integers(0, 1 << bits, (N, K // GROUP)).astype(np.uint8),
    }


def _before_after(tmp_path, model, k_in):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    art = compile_model(path, out_dir=tmp_path)
    x = np.random.default_rng(7).normal(size=(3, k_in)).astype(np.float32)
    expect = ort_session(str(path), accuracy_level=0).run(None, {"x": x})[0]
    got = TvmExecutor(art.path).run([x])[0]
    return art, got, expect


@pytest.mark.parametrize("bits", [3, 4])
def test_lowbit_linear_op(tmp_path, bits):
    inits = _packed(bits, bits) | {"bias": np.random.default_rng(0).normal(size=N).astype(np.float32)}
    node = helper.make_node("LowBitLinear", ["x", "qweight", "scales", "zeros", "bias"], ["y"], domain="edgeq",
                            bits=bits, group_size=GROUP)
    art, got, expect = _before_after(tmp_path, _model(node, inits, K, N), K)
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes


def test_lowrank_linear_op(tmp_path):
    rng = np.random.default_rng(1)
    inits = _packed(2, 2) | {"u": rng.normal(size=(K, RANK)).astype(np.float32) * 0.1,
                             "v": rng.normal(size=(RANK, N)).astype(np.float32) * 0.1}
    node = helper.make_node("LowRankLinear", ["x", "qweight", "scales", "zeros", "u", "v"], ["y"], domain="edgeq",
                            bits=2, group_size=GROUP)
    art, got, expect = _before_after(tmp_path, _model(node, inits, K, N), K)
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes


@pytest.mark.parametrize("size", [256, 96])
def test_hadamard_op(tmp_path, size):
    signs = np.where(np.random.default_rng(size).random(2 * size) < 0.5, -1.0, 1.0).astype(np.float32)
    node = helper.make_node("Hadamard", ["x", "signs"], ["y"], domain="edgeq", size=size)
    art, got, expect = _before_after(tmp_path, _model(node, {"signs": signs}, 2 * size, 2 * size), 2 * size)
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
    # the factored transform: a few small factors, never the dense size x size matrix
    assert art.weight_bytes < 4 * size * size
