"""targets/trivial_transpose.py: a transpose that only moves dimensions of size 1 (decode's head
transposes, ``[1, 1, heads, d] -> [1, heads, 1, d]``) becomes a reshape, and the reshapes around
it one view: compiled with edgeq's CPU pipeline before and after, equal bit for bit with no copy
kernel left; a transpose that moves data, or one over a symbolic dimension, is left alone."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from edgeq.targets.trivial_transpose import moves_only_unit_dims, transposes_as_reshapes
from _relax_testing import cpu_vm

HEADS, HEAD_DIM = 4, 16


def head_transpose(rows=1, axes=(0, 2, 1, 3)) -> tvm.IRModule:
    """``x [1, rows * heads * d] -> reshape [1, rows, heads, d] -> permute_dims(axes) -> reshape [1, -1]``,
    the attention output's round trip."""
    x = relax.Var("x", relax.TensorType((1, rows * HEADS * HEAD_DIM), "float32"))
    bb, op = relax.BlockBuilder(), relax.op
    with bb.function("main", [x]):
        with bb.dataflow():
            heads = bb.emit(op.reshape(x, [1, rows, HEADS, HEAD_DIM]))
            moved = bb.emit(op.permute_dims(heads, list(axes)))
            out = bb.emit_output(op.reshape(moved, [1, rows * HEADS * HEAD_DIM]))
        bb.emit_func_output(out)
    return bb.get()


def kernels_and_output(mod, x):
    lowered, vm = cpu_vm(mod)
    kernels = [gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    return kernels, vm["main"](tvm.runtime.tensor(x)).numpy()


def test_a_one_row_head_transpose_is_a_view():
    before = head_transpose()
    after = transposes_as_reshapes(before, ["main"])
    assert "permute_dims" not in str(after["main"]) and "R.reshape(" not in str(after["main"])  # back to x itself
    x = np.random.default_rng(0).normal(size=(1, HEADS * HEAD_DIM)).astype(np.float32)
    kernels_before, expected = kernels_and_output(before, x)
    kernels_after, out = kernels_and_output(after, x)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, x)  # the round trip moves nothing
    assert len(kernels_before) == 1 and kernels_after == []  # the copy kernel is gone


def test_transposes_that_move_data_are_left_alone():
    two_rows = transposes_as_reshapes(head_transpose(rows=2), ["main"])
    assert "permute_dims" in str(two_rows["main"])
    assert not moves_only_unit_dims([1, 1, 4, 16], [0, 1, 3, 2]) and moves_only_unit_dims([1, 1, 4, 16], [0, 2, 1, 3])
    seq = tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType((1, seq, HEADS, HEAD_DIM), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.permute_dims(x, [0, 2, 1, 3]))
        bb.emit_func_output(out)
    assert "permute_dims" in str(transposes_as_reshapes(bb.get(), ["main"])["main"])
