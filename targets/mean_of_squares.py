"""RMSNorm's ``mean(power(x, 2))`` as one reduction kernel: a Relax rewrite.

Relax's FuseOps fuses elementwise ops into the *output* of a reduction, never into its input: the
``power`` before RMSNorm's ``mean`` stayed a kernel of its own (one per norm, 61 per SmolLM2 decode
step, each with the VM's call, allocation and free). Here the pair becomes one ``call_te`` whose
TE squares inside the sum,

    mean_of_squares(x)[..., 0] = (sum_k power(x[..., k], 2)) / K

the same expressions as the two legalized ops (topi's power, sum and divide). In one kernel LLVM
contracts each square and the running sum into a fused multiply-add (one rounding instead of two):
the norm's outputs move by at most 2 ulp (measured, ``tests/targets/test_mean_of_squares.py``);
prefill and decode both take the rewrite. FuseOps then fuses the norm's ``add eps -> sqrt -> divide -> multiply``
into it as it did into ``mean``. The pattern is declared once; a mean over another axis or of
another power is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx, topi
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from edgeq.targets.gqa_attention import known_shape

KERNEL_NAME = "mean_of_squares"


def mean_of_squares_pattern():
    """(the ``mean`` call, the squared input's pattern, the exponent's pattern)."""
    x, exponent = wildcard(), is_const()
    return is_op("relax.mean")(is_op("relax.power")(x, exponent)), x, exponent


def mean_of_squares_te(x: te.Tensor, keepdims: bool) -> te.Tensor:
    """The mean over the last axis of ``x`` squared: topi's power, sum and divide, in one kernel."""
    squared = topi.power(x, tirx.const(2.0, x.dtype))
    axis = len(x.shape) - 1
    return topi.divide(topi.sum(squared, [axis], keepdims), x.shape[axis])


def fuse_mean_of_squares(mod: tvm.IRModule, functions) -> tvm.IRModule:
    """``mod`` with each ``mean(power(x, 2), axis=-1)`` of the Relax ``functions`` (names) one kernel."""
    pattern, x_pattern, exponent_pattern = mean_of_squares_pattern()
    builder = relax.BlockBuilder(mod)  # call_te adds each kernel once (structurally equal ones are shared)

    def rewrite(call, matches):
        x, exponent = matches[x_pattern], matches[exponent_pattern]
        shape = known_shape(x)
        if shape is None or x.ty.dtype != "float32" or exponent.value.numpy().size != 1:
            return call
        axes = list(map(int, call.attrs.axis)) if call.attrs.axis is not None else None
        if float(exponent.value.numpy().reshape(())) != 2.0 or axes not in ([-1], [len(shape) - 1]):
            return call
        return builder.call_te(mean_of_squares_te, x, bool(call.attrs.keepdims), primfunc_name_hint=KERNEL_NAME)

    for name in functions:
        gv = mod.get_global_var(name)
        builder.update_func(gv, rewrite_call(pattern, rewrite, builder.get()[gv]))
    return builder.get()
