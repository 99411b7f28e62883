"""``lift_decode_workspace``: a decode function's static storages, views and reshapes made once by
``decode_workspace()`` and passed as trailing parameters (run by the generation pipeline,
``cpu_pipeline.relax_pipeline(target, generation=True)``), on a small inline module: a chain of
kernels with reshapes between them, and an intermediate over ``past + 1`` positions (statically
planned with ``past``'s upper bound, its shape symbolic) that must stay."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tvm
from tvm import relax, te

from edgeq.targets.cpu_pipeline import relax_pipeline
from edgeq.targets.lift_decode_workspace import lift_decode_workspace

TARGET = tvm.target.Target({"kind": "llvm"})


def decode_module(upper_bound: int | None = 16) -> tvm.IRModule:
    """decode(x [1, 8], mask [1, past + 1], length [past]) = reshape(reshape(x * x, [2, 4]) * 2, [1, 8])
    + sum(mask + mask), each step a kernel of its own (opaque: FuseOps leaves them apart, as edgeq's
    packed linears are), the reshapes between them views."""
    bb = relax.BlockBuilder()
    past = tvm.tirx.Var("past", "int64")
    x = relax.Var("x", relax.TensorType([1, 8], "float32"))
    mask = relax.Var("mask", relax.TensorType([1, past + 1], "int32"))  # its own storage: another dtype
    length = relax.Var("length", relax.TensorType([past], "int8"))  # past by its shape, as cache_length

    def kernel(compute, *args):
        return bb.emit_te(compute, *args, primfunc_attrs={"op_pattern": 8})

    def twice(a):
        return te.compute(a.shape, lambda i, j: a[i, j] + a[i, j], name="twice")

    def row_sum(a):
        k = te.reduce_axis((0, a.shape[1]), name="k")
        return te.compute((1, 1), lambda i, j: te.sum(a[i, k], axis=k), name="row_sum")

    with bb.function("decode", [x, mask, length]):
        with bb.dataflow():
            square = kernel(lambda a: te.compute(a.shape, lambda i, j: a[i, j] * a[i, j], name="square"), x)
            doubled = kernel(twice, bb.emit(relax.op.reshape(square, [2, 4])))
            flat = bb.emit(relax.op.reshape(doubled, [1, 8]))
            total = kernel(row_sum, kernel(twice, mask))  # over [1, past + 1]
            out = bb.emit_output(kernel(lambda f, t: te.compute(f.shape, lambda i, j: f[i, j] + t[i, 0].astype("float32"), name="plus"),
                                        flat, total))
        bb.emit_func_output(out)
    mod = bb.get()
    if upper_bound is not None:
        mod["decode"] = mod["decode"].with_attr("tir_var_upper_bound", {"past": upper_bound})
    return mod


def decode_calls(executable) -> collections.Counter:
    code = executable.as_text().split("@decode:")[1].split("\n@")[0]
    return collections.Counter(line.split()[1] for line in code.splitlines() if line.strip().startswith("call"))


def compiled(mod):
    executable = tvm.compile(mod, target=TARGET, relax_pipeline=relax_pipeline(TARGET, generation=True))
    return executable, relax.VirtualMachine(executable, tvm.cpu())


def reference(x, mask):
    return (x * x).reshape(2, 4).__mul__(2).reshape(1, 8) + (mask + mask).sum(axis=1, keepdims=True).astype(np.float32)


def test_the_static_workspace_is_made_once_and_the_numbers_stay():
    executable, vm = compiled(decode_module())
    calls = decode_calls(executable)
    assert calls["vm.builtin.reshape"] == 0, calls  # the views between kernels come with the workspace
    # and so do the [1, past + 1] intermediate at its bound (bounded_views) and the result: a step
    # allocates nothing
    assert calls["vm.builtin.alloc_storage"] == calls["vm.builtin.alloc_tensor"] == 0, calls
    workspace = list(vm["decode_workspace"]())
    assert workspace and all(isinstance(w, tvm.runtime.Tensor) for w in workspace)
    vm.save_function("decode", "bound", *workspace)
    rng = np.random.default_rng(0)
    for past in (0, 5, 16):  # integer values: every sum is exact in float32
        x = rng.integers(-4, 5, (1, 8)).astype(np.float32)
        mask = rng.integers(0, 3, (1, past + 1)).astype(np.int32)
        got = vm["bound"](tvm.runtime.tensor(x), tvm.runtime.tensor(mask), tvm.runtime.empty((past,), "int8"))
        np.testing.assert_array_equal(got.numpy(), reference(x, mask))
        np.testing.assert_array_equal(workspace[-1].numpy(), reference(x, mask))  # the result is the last item


def test_the_returned_item_is_recorded():
    """``returned_workspace_item``: the workspace index of the tensor decode returns (its last)."""
    from edgeq.targets.lift_decode_workspace import returned_workspace_item

    lowered = relax_pipeline(TARGET, generation=True)(decode_module())
    items = len(lowered["decode_workspace"].ret_ty.fields)
    assert returned_workspace_item(lowered, "decode") == items - 1
    assert returned_workspace_item(decode_module(), "decode") is None  # no workspace


def test_a_storage_of_symbolic_size_stays_in_the_step():
    """Without ``past``'s upper bound the plan cannot size the [1, past + 1] intermediate's storage:
    it is allocated each call, in the step, with its view; the static chain and the result still move."""
    executable, vm = compiled(decode_module(upper_bound=None))
    calls = decode_calls(executable)
    assert calls["vm.builtin.reshape"] == 0, calls
    assert calls["vm.builtin.alloc_storage"] == calls["vm.builtin.alloc_tensor"] == 1, calls
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    mask = np.ones((1, 4), np.int32)
    got = vm["decode"](tvm.runtime.tensor(x), tvm.runtime.tensor(mask), tvm.runtime.empty((3,), "int8"),
                       *vm["decode_workspace"]()).numpy()
    np.testing.assert_array_equal(got, reference(x, mask))


@pytest.mark.parametrize("case", ["tuple result", "no such function"])
def test_left_alone(case):
    """A decode returning a tuple (the appending cache form: its results are the next call's
    inputs and must not be workspace the next call writes) and a module without the function are
    unchanged."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4], "float32"))
    with bb.function("decode" if case == "tuple result" else "prefill", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(x, x))
            out = bb.emit_output(relax.Tuple([y, y]))
        bb.emit_func_output(out)
    mod = bb.get()
    assert lift_decode_workspace(mod, "decode").same_as(mod)


def test_every_static_storage_is_a_workspace_piece_of_its_own():
    """Storages are never merged, however Python recycles the memory of the wrappers it reads the
    bindings through (a key made from a freed wrapper's id merged two storages' tensors)."""
    from edgeq.targets.lift_decode_workspace import _workspace_key

    keys = set()
    for size in (32, 64, 128, 256):
        call = relax.op.memory.alloc_storage(relax.ShapeExpr([size]), 0, "global", "float32")
        keys.add(_workspace_key(call, {}))
        del call
    assert len(keys) == 4 and None not in keys
