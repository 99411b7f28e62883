"""The vectorizable exp (targets/fast_exp.py) and the row-wise softmax schedule
(the ``rows`` schedule rule, targets/schedules/rows.py): numerics against numpy/onnxruntime with stated tolerances, and
the object code holds no scalar ``expf`` call."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper
from tvm import s_tir, te

import edgeq
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets import cpu_pipeline, get_target
from edgeq.targets.fast_exp import CLAMP_HI, CLAMP_LO, fast_exp, softmax_te

ULP = 2.0 ** -24  # float32 relative rounding unit


def _exp_kernel(n: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((n,), "float32", "x")
    return te.create_prim_func([x, te.compute(x.shape, lambda i: fast_exp(x[i]), name="exp")])


def test_fast_exp_is_within_two_ulp_and_keeps_special_values():
    n = 1 << 16
    sch = s_tir.Schedule(_exp_kernel(n))
    _, lanes = sch.split(sch.get_loops(sch.get_sblock("exp"))[0], [None, 8])
    sch.vectorize(lanes)
    lib = tvm.tirx.build(sch.mod, target=get_target("cpu").tvm())
    specials = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, 1e-30, -200.0, 200.0], np.float32)
    x = np.concatenate([np.linspace(-100, 100, n - len(specials)), specials]).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    got, ref = out.numpy(), np.exp(x.astype(np.float64))
    normal = (x > CLAMP_LO) & (x < CLAMP_HI)
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) <= 2 * ULP
    minus_inf, plus_inf, nan, zero, minus_zero, tiny, low, high = got[-len(specials):]
    assert np.isnan(nan)
    assert zero == minus_zero == tiny == 1.0
    assert 0 < minus_inf < 2e-38 and 0 < low < 2e-38  # clamped: tiny, not 0
    assert 2e38 < plus_inf < np.inf and 2e38 < high < np.inf  # saturates at exp(88.3), no inf


def test_a_vectorized_fast_exp_loop_stays_vector_code():
    """The NaN check is integer arithmetic: with ``tirx.isnan`` (not marked vectorizable) TVM's
    vectorizer turned the loop back into one lane at a time, which LLVM re-vectorized only in
    simple loops (the decode attention kernel's exp ran scalar)."""
    sch = s_tir.Schedule(_exp_kernel(1024))
    _, lanes = sch.split(sch.get_loops(sch.get_sblock("exp"))[0], [None, 8])
    sch.vectorize(lanes)
    after = {}

    @tvm.instrument.pass_instrument
    class AfterVectorize:
        def run_after_pass(self, mod, info):
            if info.name.endswith("VectorizeLoop"):
                after["mod"] = mod

    with tvm.transform.PassContext(instruments=[AfterVectorize()]):
        tvm.tirx.build(sch.mod, target=get_target("x86_64").tvm())
    loops = re.findall(r"^\s*for (.+) in (.+):$", after["mod"].script(), re.MULTILINE)
    assert loops == [("i_0", "range(128)")], f"loops after VectorizeLoop: {loops} (a loop over 8 lanes: scalarized)"


def test_arm64_fast_exp_is_neon_without_libm_calls():
    mod = cpu_pipeline.schedule_defaults(tvm.IRModule({"main": _exp_kernel(1024).with_attr("global_symbol", "main")}),
                                       get_target("arm64").tvm())
    asm = tvm.compile(mod, target=get_target("arm64").tvm()).mod.inspect_source("asm")
    assert "expf" not in asm
    assert re.search(r"\bfmla\s+v\d+\.4s", asm), "the polynomial is not NEON vector code"


def test_softmax_rows_schedule_matches_numpy():
    """Before: topi's four stages as separate passes with a scalar libm exp; after: one parallel
    row loop with exp computed once per element, vectorized."""
    shape = (8, 64, 128)  # enough rows for threads (schedules._loops.PARALLEL_MIN_WORK)
    x = te.placeholder(shape, "float32", "x")
    func = te.create_prim_func([x, softmax_te(x, -1)]).with_attr("global_symbol", "main")
    target = get_target("cpu").tvm()
    mod = cpu_pipeline.schedule_defaults(tvm.IRModule({"main": func}), target)
    sch = s_tir.Schedule(mod)
    exp_loops = [sch.get(lp) for lp in sch.get_loops(sch.get_sblock("softmax_exp"))]
    assert [lp.kind for lp in exp_loops] == [tvm.tirx.ForKind.PARALLEL, tvm.tirx.ForKind.VECTORIZED]
    lib = tvm.tirx.build(mod, target=target)
    xs = np.random.default_rng(0).normal(scale=8, size=shape).astype(np.float32)
    xs[0, 0, :50] = -np.inf  # masked positions, as causal attention has them
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib["main"](tvm.runtime.tensor(xs), out)
    ref = np.exp(xs - xs.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    assert np.abs(out.numpy() - ref).max() <= 1e-6  # probabilities: absolute


def test_compiled_softmax_and_silu_match_onnxruntime_without_expf(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["silu"])]
    graph = helper.make_graph(nodes, "exp_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [64, 256]),
                               helper.make_tensor_value_info("silu", TensorProto.FLOAT, [64, 256])])
    path = tmp_path / "exp_ops.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    x = np.random.default_rng(1).normal(scale=6, size=(64, 256)).astype(np.float32)
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path)
    got = TvmExecutor(art.path).run([x])
    expect = ort_session(path).run(None, {"x": x})
    assert np.abs(got[0] - expect[0]).max() <= 1e-6  # softmax probabilities
    assert np.abs(got[1] - expect[1]).max() <= 1e-6 * np.abs(expect[1]).max()  # SiLU: relative to scale
    imported = subprocess.run(["nm", "-D", "--undefined-only", str(art.path)], capture_output=True, text=True, check=True)
    assert not re.search(r"\bexpf\b", imported.stdout), "the artifact still calls libm's scalar expf"
