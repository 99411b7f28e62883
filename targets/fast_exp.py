"""A vectorizable ``exp`` for softmax and sigmoid on CPU targets.

LLVM lowers TIR's ``exp`` to one scalar ``expf`` call per lane (TVM 0.27 gives LLVM no vector
math library), so a vectorized softmax row still runs at libm speed: 9% of SmolLM2's forward at
sequence length 128. Here exp is written in arithmetic LLVM vectorizes: Cody-Waite range
reduction ``x = n·ln2 + r``, Cephes' degree-6 polynomial for ``e^r`` on ``|r| ≤ ln2/2`` and ``2^n``
built in the exponent bits (about 1 ulp; NaN passes through, the input is clamped to the normal
range, so ``-inf`` gives 1e-38 rather than 0 and overflow saturates at 2.2e38).

``legalize_map(target)`` gives Relax's LegalizeOps the float32 softmax and sigmoid built on it
for LLVM CPU targets; other dtypes and targets keep TVM's own legalization.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

LOG2E = 1.44269504088896341
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = LN2_HI + LN2_LO; n·LN2_HI is exact for |n| ≤ 128
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
CLAMP_LO, CLAMP_HI = -87.3, 88.3  # 2^n stays a normal float32 for n = round(x·log2 e) in [-126, 127]


def is_nan(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``isnan(x)`` for float32 as integer arithmetic on its bits (exponent all ones, mantissa not
    zero). TVM's vectorizer scalarizes a loop that calls ``tirx.isnan`` (the op is not marked
    vectorizable), which had kept every ``fast_exp`` one lane at a time; ``x != x`` the simplifier
    folds to false."""
    return tirx.bitwise_and(tirx.reinterpret("int32", x), tirx.const(0x7FFFFFFF, "int32")) > tirx.const(0x7F800000, "int32")


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``exp(x)`` for a float32 TIR expression, as vectorizable arithmetic."""
    f32 = "float32"

    def c(v):
        return tirx.const(v, f32)

    value, clamped, n, r = (tirx.Var(name, f32) for name in ("exp_x", "exp_clamped", "exp_n", "exp_r"))
    poly = c(EXP_POLY[0])
    for coeff in EXP_POLY[1:]:
        poly = poly * r + c(coeff)
    e_r = poly * r * r + r + c(1.0)
    two_n = tirx.reinterpret(f32, (n.astype("int32") + 127) << 23)
    body = tirx.Select(is_nan(value), value, e_r * two_n)
    body = tirx.Let(r, clamped - n * c(LN2_HI) - n * c(LN2_LO), body)
    body = tirx.Let(n, tirx.floor(clamped * c(LOG2E) + c(0.5)), body)
    body = tirx.Let(clamped, tirx.max(tirx.min(value, c(CLAMP_HI)), c(CLAMP_LO)), body)
    return tirx.Let(value, x, body)


def softmax_te(x: te.Tensor, axis: int) -> te.Tensor:
    """``softmax(x, axis)``: max, exp of the difference, sum, divide (topi's four stages)."""
    axis = axis % len(x.shape)

    def row(i, k):  # the index of x at reduced position ``k`` for the row of ``i`` (without ``axis``)
        return (*i[:axis], k, *i[axis:])

    def without(i):
        return (*i[:axis], *i[axis + 1:])

    reduced_shape = [d for n, d in enumerate(x.shape) if n != axis]
    k1 = te.reduce_axis((0, x.shape[axis]), name="k")
    maxv = te.compute(reduced_shape, lambda *i: te.max(x(*row(i, k1)), axis=k1), name="softmax_maxelem")
    e = te.compute(x.shape, lambda *i: fast_exp(x(*i) - maxv(*without(i))), name="softmax_exp")
    k2 = te.reduce_axis((0, x.shape[axis]), name="k")
    total = te.compute(reduced_shape, lambda *i: te.sum(e(*row(i, k2)), axis=k2), name="softmax_expsum")
    return te.compute(x.shape, lambda *i: e(*i) / total(*without(i)), name="softmax_norm")


def sigmoid_te(x: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: tirx.const(1.0, "float32") / (tirx.const(1.0, "float32") + fast_exp(-x(*i))),
                      name="sigmoid")


def _default(op_name: str):
    return tvm.ir.Op.get(op_name).get_attr("FLegalize")


def _legalize_softmax(bb, call):
    if call.args[0].ty.dtype != "float32":
        return _default("relax.nn.softmax")(bb, call)
    return bb.call_te(softmax_te, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


def _legalize_sigmoid(bb, call):
    if call.args[0].ty.dtype != "float32":
        return _default("relax.sigmoid")(bb, call)
    return bb.call_te(sigmoid_te, call.args[0], primfunc_name_hint="sigmoid")


def legalize_map(target) -> dict:
    """Custom legalizations for ``relax.transform.LegalizeOps`` on ``target`` (LLVM CPUs only)."""
    if "cpu" not in target.keys or target.kind.name != "llvm":
        return {}
    return {"relax.nn.softmax": _legalize_softmax, "relax.sigmoid": _legalize_sigmoid}
