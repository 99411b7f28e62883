"""``bounded_views``: a decode function's views over ``past + 1`` positions made at ``past``'s upper
bound, the kernels they are passed to rewritten to declare that static shape and loop over ``past +
1`` still (run by the generation pipeline, ``cpu_pipeline.relax_pipeline(target, generation=True)``,
before ``lift_decode_workspace``), on a small inline module: a mask-like chain over ``[1, past + 1]``
(a legalized kernel taking ``past`` as a scalar, and a hand-written one whose length ``n`` only its
buffer gave, as ``decode_attention``'s mask), a ``prefill`` sharing a kernel, and a view a builtin
reads, which must keep its computed shape. Numbers are integers: every sum is exact."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tvm
from tvm import relax, te
from tvm.script import tirx as T

from edgeq.targets.bounded_views import BOUNDED_SUFFIX
from edgeq.targets.cpu_pipeline import relax_pipeline

TARGET = tvm.target.Target({"kind": "llvm"})
UPPER_BOUND = 16


@T.prim_func(private=True, s_tir=True)
def row_sum_of_n(a: T.handle, b: T.handle):
    """The sum of a [1, n] row, ``n`` known from the buffer alone."""
    n = T.int64()
    row = T.match_buffer(a, (1, n), "int32")
    out = T.match_buffer(b, (1, 1), "int32")
    for j in range(n):
        with T.sblock("sum"):
            vj = T.axis.reduce(n, j)
            with T.init():
                out[0, 0] = 0
            out[0, 0] = out[0, 0] + row[0, vj]


def generation_module(reshaped_view: bool = False) -> tvm.IRModule:
    """decode(x [1, 8], mask [1, past + 1], length [past]) = x + sum(twice(mask)) + sum(twice(twice(
    mask))) and prefill(mask [1, positions]) = sum(twice(mask)): ``twice`` legalized from TE (a
    kernel with ``past`` as a scalar), the sums ``row_sum_of_n``; ``reshaped_view``: decode's
    second sum reads ``twice(mask)`` through a reshape (a builtin)."""
    bb = relax.BlockBuilder()
    past, positions = tvm.tirx.Var("past", "int64"), tvm.tirx.Var("positions", "int64")
    row_sum = bb.add_func(row_sum_of_n, "row_sum_of_n")

    def twice(a):
        return te.compute(a.shape, lambda i, j: a[i, j] + a[i, j], name="twice")

    def kernel(compute, *args):
        return bb.emit_te(compute, *args, primfunc_attrs={"op_pattern": 8})

    def summed(row):
        return bb.emit(relax.call_tir(row_sum, [row], relax.TensorType([1, 1], "int32")))

    x = relax.Var("x", relax.TensorType([1, 8], "int32"))
    mask = relax.Var("mask", relax.TensorType([1, past + 1], "int32"))
    length = relax.Var("length", relax.TensorType([past], "int8"))
    with bb.function("decode", [x, mask, length]):
        with bb.dataflow():
            doubled = kernel(twice, mask)
            second = bb.emit(relax.op.reshape(doubled, [1, past + 1])) if reshaped_view else kernel(twice, doubled)
            total = bb.emit(relax.op.add(summed(doubled), summed(second)))
            out = bb.emit_output(bb.emit(relax.op.add(x, total)))
        bb.emit_func_output(out)
    prefill_mask = relax.Var("mask", relax.TensorType([1, positions], "int32"))
    with bb.function("prefill", [prefill_mask]):
        with bb.dataflow():
            out = bb.emit_output(summed(kernel(twice, prefill_mask)))
        bb.emit_func_output(out)
    mod = bb.get()
    mod["decode"] = mod["decode"].with_attr("tir_var_upper_bound", {"past": UPPER_BOUND})
    mod["prefill"] = mod["prefill"].with_attr("tir_var_upper_bound", {"positions": UPPER_BOUND + 4})
    return mod


def reference(x, mask, reshaped_view: bool):
    second = 2 * mask if reshaped_view else 4 * mask
    return x + (2 * mask).sum() + second.sum()


def calls_of(executable, function: str) -> collections.Counter:
    code = executable.as_text().split(f"@{function}:")[1].split("\n@")[0]
    return collections.Counter(line.split()[1] for line in code.splitlines() if line.strip().startswith("call"))


def run_decode(vm, x, mask):
    past = mask.shape[1] - 1
    args = [tvm.runtime.tensor(x), tvm.runtime.tensor(mask), tvm.runtime.empty((past,), "int8")]
    return vm["decode"](*args, *vm["decode_workspace"]()).numpy()


@pytest.mark.parametrize("reshaped_view", [False, True])
def test_the_views_over_past_positions_are_made_once_and_the_numbers_stay(reshaped_view):
    mod = generation_module(reshaped_view)
    executable = tvm.compile(mod, target=TARGET, relax_pipeline=relax_pipeline(TARGET, generation=True))
    calls = calls_of(executable, "decode")
    if reshaped_view:  # read by a builtin: the view keeps its computed shape, its storage stays in the step
        assert calls["vm.builtin.alloc_storage"] == 1 and calls["vm.builtin.make_shape"] >= 1, calls
    else:  # nothing allocated and no shape made per call: every view is in the workspace
        assert calls["vm.builtin.alloc_storage"] == calls["vm.builtin.alloc_tensor"] == calls["vm.builtin.make_shape"] == 0, calls
        # four kernel calls take past or past + 1: each boxed once per step
        assert calls["vm.builtin.make_prim_value"] == 2, calls
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(0)
    for past in (0, 5, UPPER_BOUND):
        x = rng.integers(-4, 5, (1, 8)).astype(np.int32)
        mask = rng.integers(0, 3, (1, past + 1)).astype(np.int32)
        np.testing.assert_array_equal(run_decode(vm, x, mask), reference(x, mask, reshaped_view))
    mask = rng.integers(0, 3, (1, 7)).astype(np.int32)
    np.testing.assert_array_equal(vm["prefill"](tvm.runtime.tensor(mask)).numpy(), [[2 * mask.sum()]])


def test_the_kernels_declare_the_bound_and_take_what_their_buffers_gave():
    """decode calls copies of its kernels whose buffers have the bound's shape [1, 17], ``twice``
    still taking ``past``, ``row_sum_of_n`` now taking ``n`` as a scalar (given ``past + 1`` by
    the call); prefill's kernels are the originals, unchanged."""
    from tvm.tirx.buffer import BufferType

    lowered = relax_pipeline(TARGET, generation=True)(generation_module())
    bounded = {gv.name_hint: f for gv, f in lowered.functions.items() if gv.name_hint.endswith(BOUNDED_SUFFIX)}
    assert set(bounded) >= {"twice" + BOUNDED_SUFFIX, "row_sum_of_n" + BOUNDED_SUFFIX}, set(bounded)
    for name, kernel in bounded.items():
        shapes = [[int(d) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in p.ty.shape]
                  for p in kernel.params if isinstance(p.ty, BufferType)]
        assert [1, UPPER_BOUND + 1] in shapes, (name, shapes)
        scalars = [p.name for p in kernel.params if not isinstance(p.ty, BufferType)]
        assert scalars == (["n"] if name.startswith("row_sum_of_n") else ["past"]), (name, scalars)
    original = lowered["row_sum_of_n"]
    assert not any(isinstance(d, tvm.tirx.IntImm) for d in original.params[0].ty.shape[1:])  # prefill's: [1, n]
    assert "twice" not in {gv.name_hint for gv in lowered.get_global_vars()}  # decode's own original: removed
