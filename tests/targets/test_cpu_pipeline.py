"""edgeq's default CPU schedules (targets/schedules/, the packed GEMM in
targets/schedule_lowbit.py): the scheduled kernels compute what the unscheduled ones do
(onnxruntime / numpy as reference), every kernel of a matmul model gets a schedule, and the
arm64 builds use NEON vector instructions (sdot with dotprod)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, te

import edgeq
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets import cpu_pipeline, get_target, schedule_lowbit
from edgeq.targets.importer import import_onnx

# float32 sums of a few hundred products in another order: a few ulps of the output's scale
TOL = 1e-5


def _mlp_model(m: int, k: int, n: int, transposed: bool) -> onnx.ModelProto:
    """Softmax(X @ W + b) (W as [K, N], or tied-style Transpose of an [N, K] initializer), then
    RMS-style normalisation: matmul, reduction and elementwise kernels in one model."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n, k) if transposed else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.normal(size=n).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([2.0], np.float32), "two")]
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0])] if transposed else []
    nodes += [helper.make_node("MatMul", ["x", "wt" if transposed else "w"], ["xw"]),
              helper.make_node("Add", ["xw", "b"], ["h"]),
              helper.make_node("Softmax", ["h"], ["p"], axis=-1),
              helper.make_node("Pow", ["h", "two"], ["h2"]),
              helper.make_node("ReduceMean", ["h2"], ["ms"], keepdims=1),
              helper.make_node("Sqrt", ["ms"], ["rms"]),
              helper.make_node("Div", ["h", "rms"], ["hn"]),
              helper.make_node("Add", ["p", "hn"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _scheduled_module(model: onnx.ModelProto, target: str = "cpu") -> tvm.IRModule:
    spec = get_target(target)
    tvm_target = spec.tvm()
    with tvm_target:
        mod = relax.get_default_pipeline(tvm_target)(import_onnx(model, target=spec.name))
        return cpu_pipeline.schedule_defaults(cpu_pipeline.schedule_kernels(mod, tvm_target), tvm_target)


@pytest.mark.parametrize("m,transposed,n", [(1, False, 128), (32, False, 128), (1, True, 128), (32, True, 128),
                                            (32, True, 96)])  # n = 96: 6-column register tiles
def test_scheduled_model_matches_onnxruntime(tmp_path, m, transposed, n):
    model = _mlp_model(m, 96, n, transposed)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).normal(size=(m, 96)).astype(np.float32)
    expect = ort_session(path).run(None, {"x": x})[0]
    got = TvmExecutor(edgeq.compile(path, target="cpu", out_dir=tmp_path).path).run([x])[0]
    assert np.abs(got - expect).max() <= TOL * np.abs(expect).max()


def test_every_matmul_and_reduction_kernel_is_scheduled():
    mod = _scheduled_module(_mlp_model(32, 96, 128, transposed=False))
    names = {gv.name_hint: func for gv, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc)}
    kernels = [name for name in names if any(op in name for op in ("matmul", "softmax", "mean", "divide"))]
    assert kernels
    unscheduled = [name for name in kernels if not (names[name].attrs and "tirx.is_scheduled" in names[name].attrs)]
    assert unscheduled == []


@pytest.mark.parametrize("rows", [32, 48])
def test_packed_gemm_matches_weight_only_layer(tmp_path, rows):
    """Prefill-sized inputs take the dequantize-per-tile GEMM kernel."""
    from test_lowbit import _lowbit_linear_model

    k, n, group = 256, 96, 64
    gen = torch.Generator().manual_seed(rows)
    layer = WeightOnlyLinear.from_integers(torch.randint(0, 16, (n, k), generator=gen),
                                           (torch.rand(n, k // group, generator=gen) * 0.05 + 0.01).half(),
                                           torch.randint(0, 16, (n, k // group), generator=gen), 4,
                                           bias=torch.randn(n, generator=gen))
    path = tmp_path / "lowbit.onnx"
    onnx.save(_lowbit_linear_model(layer), path)
    x = torch.randn(rows, k, generator=gen)
    assert rows >= schedule_lowbit.GEMM_MIN_ROWS and rows % schedule_lowbit.GEMM_ROW_TILE == 0
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path, specialize={"batch": rows})
    got = TvmExecutor(art.path).run([x.numpy()])[0]
    expect = layer(x).detach().numpy()
    assert np.abs(got - expect).max() <= 10 * TOL * np.abs(expect).max()


def _asm(func: tvm.tirx.PrimFunc, target: str) -> str:
    tvm_target = get_target(target).tvm()
    mod = cpu_pipeline.schedule_defaults(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm_target)
    assert "tirx.is_scheduled" in mod["main"].attrs
    return tvm.compile(mod, target=tvm_target).mod.inspect_source("asm")


def test_arm64_float_matmul_uses_neon_fma():
    a = te.placeholder((32, 64), "float32", "a")
    b = te.placeholder((64, 128), "float32", "b")
    k = te.reduce_axis((0, 64), "k")
    c = te.compute((32, 128), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    asm = _asm(te.create_prim_func([a, b, c]), "arm64")
    assert re.search(r"\bfmla\s+v\d+\.4s", asm), "no NEON vector FMA in the arm64 matmul"


def test_arm64_dotprod_integer_matmul_uses_sdot():
    a = te.placeholder((8, 256), "int8", "a")
    b = te.placeholder((64, 256), "int8", "b")
    k = te.reduce_axis((0, 256), "k")
    c = te.compute((8, 64), lambda i, j: te.sum(a[i, k].astype("int32") * b[j, k].astype("int32"), axis=k), name="matmul")
    func = te.create_prim_func([a, b, c])
    assert re.search(r"\bsdot\s+v\d+\.4s", _asm(func, "arm64-dotprod")), "no sdot in the arm64-dotprod int8 matmul"
    assert re.search(r"\bv\d+\.(16b|8h|4s)", _asm(func, "arm64")), "no NEON vector code in the arm64 int8 matmul"


def _mask_add_module(bound: int | None) -> tvm.IRModule:
    """A decode step's mask add, ``[1, 9, 1, past]`` scores plus a ``[1, 1, 1, past]`` mask, in a
    Relax function whose ``tir_var_upper_bound`` gives ``past`` (when ``bound``)."""
    past = tvm.tirx.Var("past", "int64")
    bb = relax.BlockBuilder()
    scores = relax.Var("scores", relax.TensorType([1, 9, 1, past], "float32"))
    mask = relax.Var("mask", relax.TensorType([1, 1, 1, past], "float32"))
    with bb.function("main", [scores, mask], {} if bound is None else {"tir_var_upper_bound": {"past": bound}}):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(scores, mask))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("bound,threads", [(None, True), (256, False), (1 << 16, True)])
def test_symbolic_kernels_take_threads_by_their_upper_bound(bound, threads):
    """A kernel over ``past`` positions runs on one thread when the function's upper bound of
    ``past`` keeps it below PARALLEL_MIN_WORK (a launch over the pool costs more than the work),
    on the pool when the bound is large or unknown; either way it computes the sum."""
    spec = get_target("cpu")
    tvm_target = spec.tvm()
    with tvm_target:
        mod = cpu_pipeline.schedule_defaults(relax.get_default_pipeline(tvm_target)(_mask_add_module(bound)), tvm_target)
    assert ("T.parallel" in mod["add"].script()) == threads
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm_target, relax_pipeline=None), tvm.cpu())
    rng = np.random.default_rng(0)
    scores, mask = rng.normal(size=(1, 9, 1, 130)).astype(np.float32), rng.normal(size=(1, 1, 1, 130)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(scores), tvm.runtime.tensor(mask)).numpy()
    np.testing.assert_array_equal(out, scores + mask)
