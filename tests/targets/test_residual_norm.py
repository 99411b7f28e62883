"""targets/residual_norm.py: a residual add and the RMSNorm of its sum become one kernel with two
outputs. Built inline in the form a decoder layer has after ``fuse_mean_of_squares`` (a symbolic
row count, as prefill has; the sum used again by a later add), compiled with edgeq's CPU pipeline
before and after: both outputs equal bit for bit, one kernel fewer; a norm of something other
than an add is left alone."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from edgeq.targets.mean_of_squares import fuse_mean_of_squares
from edgeq.targets.residual_norm import KERNEL_NAME, fuse_add_rms_norm
from _relax_testing import cpu_vm

HIDDEN = 96
WEIGHT = np.linspace(0.5, 1.5, HIDDEN, dtype=np.float32)


def residual_then_norm(residual: bool = True) -> tvm.IRModule:
    """``h = a + b`` (or ``h = a * b``), ``y = RMSNorm(h)``, returning ``(h + y, y)``: ``h`` has a later user."""
    rows = tirx.Var("seq", "int64")
    a, b = (relax.Var(name, relax.TensorType((1, rows, HIDDEN), "float32")) for name in ("a", "b"))
    bb, op = relax.BlockBuilder(), relax.op
    with bb.function("main", [a, b]):
        with bb.dataflow():
            h = bb.emit(op.add(a, b) if residual else op.multiply(a, b))
            mean = bb.emit(op.mean(op.power(h, relax.const(2.0, "float32")), axis=[-1], keepdims=True))
            scale = op.divide(relax.const(1.0, "float32"), op.sqrt(op.add(mean, relax.const(1e-6, "float32"))))
            y = bb.emit(op.multiply(relax.const(WEIGHT), op.multiply(h, scale)))
            out = bb.emit_output(relax.Tuple([bb.emit(op.add(h, y)), y]))
        bb.emit_func_output(out)
    return fuse_mean_of_squares(bb.get(), ["main"])


def kernels_and_outputs(mod, args):
    """(the kernels ``main`` calls, in order; its outputs)."""
    lowered, vm = cpu_vm(mod)
    kernels = {gv for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
               and not gv.name_hint.startswith("shape_func")}
    calls = []
    relax.analysis.post_order_visit(lowered["main"], lambda e: calls.append(e.op.name_hint) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.GlobalVar) and e.op in kernels else None)
    return calls, [x.numpy() for x in vm["main"](*[tvm.runtime.tensor(x) for x in args])]


def test_residual_add_inside_the_next_norm():
    before = residual_then_norm()
    after = fuse_add_rms_norm(before, ["main"])
    text = str(after["main"])
    assert text.count(f"R.call_tir({KERNEL_NAME},") == 1 and "mean_of_squares" not in text and text.count("R.add(") == 1
    rng = np.random.default_rng(0)
    args = [rng.normal(size=(1, 5, HIDDEN)).astype(np.float32) * 3 for _ in range(2)]
    kernels_before, expected = kernels_and_outputs(before, args)
    kernels_after, outputs = kernels_and_outputs(after, args)
    for out, ref in zip(outputs, expected):
        np.testing.assert_array_equal(out, ref)
    assert len(kernels_after) == len(kernels_before) - 1 == 2 and KERNEL_NAME in kernels_after[0]
    total = args[0] + args[1]
    reference = total / np.sqrt((total.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * WEIGHT
    np.testing.assert_allclose(outputs[1], reference, rtol=1e-5, atol=1e-6)


def test_a_norm_of_a_product_is_left_alone():
    before = residual_then_norm(residual=False)
    assert KERNEL_NAME not in str(fuse_add_rms_norm(before, ["main"])["main"])
