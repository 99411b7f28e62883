"""targets/mean_of_squares.py: RMSNorm's ``mean(power(x, 2))`` becomes one reduction kernel into
which FuseOps fuses the rest of the norm. Built inline as torch exports RMSNorm (a symbolic row
count, as prefill has), compiled with edgeq's CPU pipeline before and after: within 2 ulp (LLVM contracts the
square and the running sum into one fused multiply-add once they share a kernel), one kernel
fewer; a mean of a cube is left alone."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from edgeq.targets.mean_of_squares import KERNEL_NAME, fuse_mean_of_squares
from _relax_testing import cpu_vm

HIDDEN = 96


def rms_norm(exponent: float = 2.0) -> tvm.IRModule:
    rows = tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType((1, rows, HIDDEN), "float32"))
    bb, op = relax.BlockBuilder(), relax.op
    weight = relax.const(np.linspace(0.5, 1.5, HIDDEN, dtype=np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            mean = bb.emit(op.mean(op.power(x, relax.const(exponent, "float32")), axis=[-1], keepdims=True))
            scale = op.divide(relax.const(1.0, "float32"), op.sqrt(op.add(mean, relax.const(1e-6, "float32"))))
            out = bb.emit_output(op.multiply(weight, op.multiply(x, scale)))
        bb.emit_func_output(out)
    return bb.get()


def lowered_and_run(mod, x):
    lowered, vm = cpu_vm(mod)
    kernels = [gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
               and not gv.name_hint.startswith("shape_func")]
    return kernels, vm["main"](tvm.runtime.tensor(x)).numpy()


def test_rms_norm_squares_inside_its_mean():
    before = rms_norm()
    after = fuse_mean_of_squares(before, ["main"])
    assert "R.power" not in str(after["main"]) and "R.mean" not in str(after["main"])
    x = np.random.default_rng(0).normal(size=(1, 5, HIDDEN)).astype(np.float32) * 3
    kernels_before, expected = lowered_and_run(before, x)
    kernels_after, out = lowered_and_run(after, x)
    np.testing.assert_array_max_ulp(out, expected, maxulp=2)
    assert len(kernels_after) == len(kernels_before) - 1 == 1 and KERNEL_NAME in kernels_after[0]
    reference = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 1.5, HIDDEN)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)


def test_a_mean_of_cubes_is_left_alone():
    before = rms_norm(exponent=3.0)
    assert "R.power" in str(fuse_mean_of_squares(before, ["main"])["main"])
