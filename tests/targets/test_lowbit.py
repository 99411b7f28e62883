"""Packed low-bit linears through TVM: before (onnxruntime / the PyTorch layer) and after (the
compiled host artifact) agree, and the artifact keeps the weights packed."""

from __future__ import annotations

import os
import re

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session

K, N, GROUP = 256, 96, 64
# float32 sums of 256 products in a different order: a few ulps of the output's scale
TOL = 1e-5


def _dq_matmul_model(bits: int, signed: bool, opset: int, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """Y = X @ DequantizeLinear(W [K, N], blocked along K) + b, with W a 2/4-bit initializer."""
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    np_type = {(4, True): ml_dtypes.int4, (4, False): ml_dtypes.uint4, (2, True): ml_dtypes.int2, (2, False): ml_dtypes.uint2}[bits, signed]
    q = rng.integers(lo, hi + 1, size=(K, N))
    zp = rng.integers(lo, hi + 1, size=(K // GROUP, N))
    scale = rng.uniform(0.01, 0.05, size=(K // GROUP, N)).astype(np.float32)
    bias = rng.normal(size=N).astype(np.float32)
    inits = [
        numpy_helper.from_array(q.astype(np_type), "w"),
        numpy_helper.from_array(scale, "w_scale"),
        numpy_helper.from_array(zp.astype(np_type), "w_zero"),
        numpy_helper.from_array(bias, "b"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_f"], axis=0, block_size=GROUP),
        helper.make_node("MatMul", ["x", "w_f"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, N])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    weight = ((q - np.repeat(zp, GROUP, axis=0)) * np.repeat(scale, GROUP, axis=0)).astype(np.float32)
    return model, weight


@pytest.mark.parametrize("bits,signed,opset", [(4, True, 21), (4, False, 21), (2, False, 25), (2, True, 25)])
def test_blocked_dequantize_matmul_matches_onnxruntime(tmp_path, bits, signed, opset):
    model, _ = _dq_matmul_model(bits, signed, opset)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path)
    x = np.random.default_rng(1).normal(size=(2, 3, K)).astype(np.float32)
    expect = ort_session(str(path), accuracy_level=0).run(None, {"x": x})[0]
    got = TvmExecutor(art.path).run([x])[0]
    scale = np.abs(expect).max()
    assert np.abs(got - expect).max() <= TOL * scale * 10, np.abs(got - expect).max() / scale
    # packed weight + float32 scales + zero points + bias: no float32 copy of W
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes, (art.weight_bytes, art.onnx_weight_bytes)
    assert art.weight_bytes < K * N  # a float32 weight would be 4·K·N bytes


def _lowbit_linear_model(layer: WeightOnlyLinear) -> onnx.ModelProto:
    """One edgeq.LowBitLinear node (packed qweight, scales, zeros, bias; bits, group_size)."""
    inits = [
        numpy_helper.from_array(layer.qweight.numpy(), "qweight"),
        numpy_helper.from_array(layer.scales.numpy(), "scales"),
        numpy_helper.from_array(layer.zeros.numpy(), "zeros"),
        numpy_helper.from_array(layer.bias.numpy(), "bias"),
    ]
    node = helper.make_node("LowBitLinear", ["x", "qweight", "scales", "zeros", "bias"], ["y"], domain="edgeq",
                            name="fc", bits=layer.bits, group_size=layer.group_size)
    graph = helper.make_graph(
        [node], "lowbit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", layer.in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", layer.out_features])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("edgeq", 1)])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lowbit_linear_matches_weight_only_layer(tmp_path, bits):
    gen = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 1 << bits, (N, K), generator=gen)
    scales = (torch.rand(N, K // GROUP, generator=gen) * 0.05 + 0.01).half()
    zeros = torch.randint(0, 1 << bits, (N, K // GROUP), generator=gen)
    layer = WeightOnlyLinear.from_integers(q, scales, zeros, bits, bias=torch.randn(N, generator=gen))
    path = tmp_path / "lowbit.onnx"
    onnx.save(_lowbit_linear_model(layer), path)
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path)
    x = torch.randn(5, K, generator=gen)
    expect = layer(x).numpy()
    got = TvmExecutor(art.path).run([x.numpy()])[0]
    scale = np.abs(expect).max()
    assert np.abs(got - expect).max() <= TOL * scale * 10, np.abs(got - expect).max() / scale
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes


def test_op_without_lowering_names_node_op_and_target(tmp_path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="acme", name="mystery")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("acme", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(edgeq.errors.CompileError, match=r"node 'mystery': op acme\.Frobnicate has no lowering for target 'arm64'"):
        edgeq.compile(path, target="arm64", out_dir=tmp_path)
    assert not list(tmp_path.glob("bad.arm64*"))


def test_arm64_packed_kernel_uses_neon(tmp_path):
    """The scheduled unpack-and-matmul compiles to NEON vector code for arm64."""
    import shutil
    import subprocess

    from edgeq.targets import get_target

    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None or shutil.which(get_target("arm64").cross_compiler) is None:
        message = "aarch64 binutils/g++ not installed (Debian package g++-aarch64-linux-gnu)"
        if os.environ.get("EDGEQ_REQUIRE_CROSS"):  # CI installs every cross compiler
            pytest.fail(message)
        pytest.skip(message)
    gen = torch.Generator().manual_seed(0)
    layer = WeightOnlyLinear.from_integers(torch.randint(0, 16, (N, K), generator=gen),
                                           torch.rand(N, K // GROUP, generator=gen).half(),
                                           torch.randint(0, 16, (N, K // GROUP), generator=gen), 4,
                                           bias=torch.zeros(N))
    path = tmp_path / "lowbit.onnx"
    onnx.save(_lowbit_linear_model(layer), path)
    art = edgeq.compile(path, target="arm64", out_dir=tmp_path)
    asm = subprocess.run([objdump, "-d", str(art.path)], capture_output=True, text=True, check=True).stdout
    body = asm.split("<packed_linear", 1)[1] if "<packed_linear" in asm else asm
    # NEON: float multiply-add on 4 lanes and byte-wide shifts/masks on 16 lanes
    assert re.search(r"\bfml[as]\s+v\d+\.4s", body) or re.search(r"\bfmul\s+v\d+\.4s", body), "no NEON float vector code"
    assert re.search(r"v\d+\.(16b|8b|8h)", body), "no NEON integer (unpack) vector code"
