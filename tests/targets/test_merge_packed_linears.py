"""Horizontal fusion of packed linears on one input (targets/pre_tvm/merge_packed_linears.py): before
(three DequantizeLinear + MatMul on X, onnxruntime) and after (one PackedLinear and a Split,
compiled) agree, at one row (GEMV) and at 32 rows (GEMM), and the weights are only reordered."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets.pre_tvm.importer_ops import PACKED_LINEAR
from edgeq.targets.pre_tvm.merge_packed_linears import merge_packed_linears
from edgeq.targets.pre_tvm.pack_lowbit_matmul import pack_lowbit_matmul

K, GROUP, WIDTHS = 192, 64, (96, 48, 48)  # q, k, v style: one input, three widths
TOL = 1e-5  # float32 sums of 192 products: a few ulps of the output's scale


def _qkv_model() -> onnx.ModelProto:
    """Three W4 DequantizeLinear + MatMul on the same X, their outputs concatenated (plus one
    linear on another input, which must stay alone)."""
    rng = np.random.default_rng(0)
    nodes, inits, outs = [], [], []
    for n, width in enumerate((*WIDTHS, 24)):
        q = rng.integers(0, 16, (K, width)).astype(ml_dtypes.uint4)
        zp = rng.integers(0, 16, (K // GROUP, width)).astype(ml_dtypes.uint4)
        scale = rng.uniform(0.01, 0.05, (K // GROUP, width)).astype(np.float32)
        inits += [numpy_helper.from_array(q, f"w{n}"), numpy_helper.from_array(scale, f"s{n}"),
                  numpy_helper.from_array(zp, f"z{n}")]
        source = "x" if n < len(WIDTHS) else "x2"
        nodes += [helper.make_node("DequantizeLinear", [f"w{n}", f"s{n}", f"z{n}"], [f"wf{n}"], axis=0, block_size=GROUP),
                  helper.make_node("MatMul", [source, f"wf{n}"], [f"y{n}"])]
        outs.append(f"y{n}")
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=-1))
    graph = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", K]),
                                              helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["rows", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", sum(WIDTHS) + 24])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_rewrite_merges_the_shared_input_group_only():
    before = pack_lowbit_matmul(_qkv_model())
    after = merge_packed_linears(onnx.ModelProto.FromString(before.SerializeToString()))
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert (count(before, PACKED_LINEAR), count(after, PACKED_LINEAR), count(after, "Split")) == (4, 2, 1)
    fused = next(n for n in after.graph.node if n.op_type == PACKED_LINEAR and n.input[0] == "x")
    inits = {t.name: t for t in after.graph.initializer}
    assert list(inits[fused.input[1]].dims) == [sum(WIDTHS), K // 2]  # packed rows stacked along N
    size = lambda m: sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer if t.data_type != TensorProto.INT64)  # noqa: E731
    assert size(after) == size(before)  # only reordered


@pytest.mark.parametrize("rows", [1, 32])
def test_merged_model_matches_onnxruntime(tmp_path, rows):
    path = tmp_path / "qkv.onnx"
    onnx.save(_qkv_model(), path)
    rng = np.random.default_rng(rows)
    x, x2 = (rng.normal(size=(rows, K)).astype(np.float32) for _ in range(2))
    expect = ort_session(path).run(None, {"x": x, "x2": x2})[0]
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path, specialize={"rows": rows})
    got = TvmExecutor(art.path).run([x, x2])[0]
    assert np.abs(got - expect).max() <= TOL * np.abs(expect).max()


def test_merge_pass_is_verified_on_onnxruntime():
    """The pass alone in verify mode: the merged PackedLinear runs as its reference, LowBitLinear."""
    from _passes_testing import count, verified

    out, change = verified(pack_lowbit_matmul(_qkv_model()), "merge_packed_linears")
    assert (count(out, PACKED_LINEAR), count(out, "Split")) == (2, 1) and change <= TOL
