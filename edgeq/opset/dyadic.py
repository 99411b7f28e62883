"""``edgeq.DyadicRequantize``: HAWQ-V3's integer-only rescale, and THE rounding contract.

An int32 accumulator at scale ``S_acc`` is brought to an output scale ``S_out`` by a dyadic
number ``b / 2^c`` close to ``S_acc / S_out``, with integers only:

    y = clip(((x * b + 2^(c-1)) >> c) + zero_point, lo, hi)        computed in int64

``>>`` is an arithmetic (flooring) right shift, so ``(t + 2^(c-1)) >> c`` rounds half up
(towards +inf) for negative values too. This one contract is used by the PyTorch integer
reference (``edgeq.quant.dyadic``), the ONNX function body below (BitShift at opset >= 28,
where ONNX allows signed shifts; floor division built from Mod/Sub/Div below that, because
integer Div truncates towards zero) and the TVM lowering (``edgeq.targets.integer_ops``).

``multiplier`` and ``shift`` broadcast against ``x`` numpy-style (``[C, 1, 1]`` for a per-channel
NCHW tensor, ``[N]`` for the last axis of a matmul). ``dyadic_multiplier`` derives them from a
real scale: ``m, e = frexp(scale)``, ``b = round(m * 2^31)`` (renormalised when it rounds to
2^31), ``c = 31 - e``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeq.errors import QuantizationError
from edgeq.opset.registry import DOMAIN, OPSET_VERSION, EdgeqOp, register_op

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_SHIFT = 62  # keeps 2^(c-1) and x*b (|x| < 2^31, b < 2^31) inside int64


def dyadic_multiplier(scale) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) as int32 arrays with b / 2^c ~= scale, for 0 <= scale < 2^30 (elementwise).

    Scales so small that c would pass 62 keep c = 62 and shift b down (rounding), which is the
    same number to within 2^-62.
    """
    scale = np.asarray(scale, dtype=np.float64)
    if np.any(~np.isfinite(scale)) or np.any(scale < 0) or np.any(scale >= 2.0**30):
        raise QuantizationError(f"dyadic requantize needs 0 <= scale < 2^30, got {scale.ravel()[:4]}")
    mant, exp = np.frexp(scale)  # scale = mant * 2^exp, mant in [0.5, 1)
    b = np.round(mant * 2.0**31).astype(np.int64)
    renorm = b == 2**31
    b = np.where(renorm, 2**30, b)
    exp = np.where(renorm, exp + 1, exp).astype(np.int64)
    c = 31 - exp
    zero = scale == 0
    c = np.where(zero, 1, c)
    excess = np.maximum(c - MAX_SHIFT, 0)
    if np.any(excess):
        b = np.where(excess > 0, (b + (np.int64(1) << np.maximum(excess - 1, 0))) >> excess, b)
        b = np.where(excess > 63, 0, b)
        c = np.minimum(c, MAX_SHIFT)
    return b.astype(np.int32), c.astype(np.int32)


def dyadic_requantize_reference(x, multiplier, shift, zero_point, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    """The rounding contract in numpy, int64 throughout; returns int32."""
    x = np.asarray(x).astype(np.int64)
    m = np.asarray(multiplier).astype(np.int64)
    s = np.asarray(shift).astype(np.int64)
    zp = np.asarray(zero_point).astype(np.int64)
    t = x * m + (np.int64(1) << (s - 1))
    y = (t >> s) + zp
    return np.clip(y, lo, hi).astype(np.int32)


def _schema() -> onnx.defs.OpSchema:
    OpSchema = onnx.defs.OpSchema
    i32 = "tensor(int32)"
    return OpSchema(
        "DyadicRequantize", DOMAIN, OPSET_VERSION,
        doc="y = clip(((x*multiplier + 2^(shift-1)) >> shift) + zero_point, lo, hi) in int64 "
            "with an arithmetic right shift; int32 in and out.",
        inputs=[
            OpSchema.FormalParameter("x", i32, "int32 accumulator"),
            OpSchema.FormalParameter("multiplier", i32, "b, broadcast against x"),
            OpSchema.FormalParameter("shift", i32, "c >= 1, broadcast against x"),
            OpSchema.FormalParameter("zero_point", i32, "added after the shift"),
        ],
        outputs=[OpSchema.FormalParameter("y", i32, "requantized values")],
        attributes=[
            OpSchema.Attribute("lo", OpSchema.AttrType.INT, "lower clip bound", required=True),
            OpSchema.Attribute("hi", OpSchema.AttrType.INT, "upper clip bound", required=True),
        ],
    )


def _function(attrs: dict | None = None, opset: int = 21) -> onnx.FunctionProto:
    """The flat body at standard ``opset``: BitShift from 28, floor division via Mod below."""
    T = TensorProto
    n = helper.make_node
    one_u64 = helper.make_tensor("one", T.UINT64, [], [1])
    nodes = [
        n("Cast", ["x"], ["x64"], to=T.INT64),
        n("Cast", ["multiplier"], ["m64"], to=T.INT64),
        n("Cast", ["shift"], ["s64"], to=T.INT64),
        n("Cast", ["zero_point"], ["zp64"], to=T.INT64),
        n("Constant", [], ["one_u"], value=one_u64),
        n("Constant", [], ["one_i"], value=helper.make_tensor("one_i", T.INT64, [], [1])),
        n("Sub", ["s64", "one_i"], ["s_minus_1"]),
        n("Cast", ["s_minus_1"], ["s_minus_1_u"], to=T.UINT64),
        n("BitShift", ["one_u", "s_minus_1_u"], ["half_u"], direction="LEFT"),
        n("Cast", ["half_u"], ["half"], to=T.INT64),
        n("Mul", ["x64", "m64"], ["prod"]),
        n("Add", ["prod", "half"], ["t"]),
    ]
    if opset >= 28:
        nodes.append(n("BitShift", ["t", "s64"], ["q"], direction="RIGHT"))
    else:
        nodes += [
            n("Cast", ["s64"], ["s_u"], to=T.UINT64),
            n("BitShift", ["one_u", "s_u"], ["pow_u"], direction="LEFT"),
            n("Cast", ["pow_u"], ["pow"], to=T.INT64),
            n("Mod", ["t", "pow"], ["rem"]),  # sign of the divisor: 0 <= rem < 2^s
            n("Sub", ["t", "rem"], ["t_floor"]),
            n("Div", ["t_floor", "pow"], ["q"]),  # exact: t_floor is a multiple of 2^s
        ]
    lo_node = n("Constant", [], ["lo64"])
    lo_node.attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT, ref_attr_name="lo"))
    hi_node = n("Constant", [], ["hi64"])
    hi_node.attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT, ref_attr_name="hi"))
    nodes += [
        n("Add", ["q", "zp64"], ["shifted"]),
        lo_node,
        hi_node,
        n("Max", ["shifted", "lo64"], ["floor_clipped"]),
        n("Min", ["floor_clipped", "hi64"], ["clipped"]),
        n("Cast", ["clipped"], ["y"], to=T.INT32),
    ]
    return helper.make_function(
        DOMAIN, "DyadicRequantize", ["x", "multiplier", "shift", "zero_point"], ["y"], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=["lo", "hi"],
    )


DOC = """\
x, multiplier, shift and zero_point are int32 and broadcast numpy-style; the product and the
rounding term are computed in int64, so |x| < 2^31 and b < 2^31 cannot overflow. shift >= 1.
Rounding: half up (towards +inf), for negative x too, because the shift floors. lo and hi clip
after the zero point is added (a ReLU is lo = zero_point). Consumers cast y to uint8/int8.
"""

DYADIC_REQUANTIZE = register_op(EdgeqOp(
    name="DyadicRequantize",
    schema=_schema(),
    function=_function,
    reference=dyadic_requantize_reference,
    doc=DOC,
))


# The integer constants of an integer-only layer, derived from its float32 scales in float64.
# The PyTorch integer reference (edgeq.quant.dyadic) and the integerize pass (edgeq.passes) both
# call these, on the same float32 numbers, so they compute the same integers.


def accumulator_scale(input_scale, weight_scale) -> np.ndarray:
    """S_in * S_w (per output channel), the scale of an integer conv/matmul's int32 accumulator."""
    return np.float64(np.float32(input_scale)) * np.asarray(weight_scale, np.float32).astype(np.float64)


def bias_int32(bias, input_scale, weight_scale) -> np.ndarray:
    """The float bias as int32 at the accumulator's scale (round half to even)."""
    q = np.rint(np.asarray(bias, np.float32).astype(np.float64) / accumulator_scale(input_scale, weight_scale))
    if np.any(np.abs(q) > INT32_MAX):
        raise QuantizationError("bias does not fit int32 at scale S_in*S_w")
    return q.astype(np.int32)


def rescale_multiplier(from_scale, to_scale, count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) for from_scale / (count * to_scale): count > 1 divides a sum (average pooling)."""
    ratio = np.asarray(from_scale, np.float64) / (np.float64(count) * np.float64(np.float32(to_scale)))
    return dyadic_multiplier(ratio)


def accumulator_multiplier(input_scale, weight_scale, output_scale) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) that bring an integer conv/matmul's int32 accumulator (S_in * S_w) to S_out."""
    return rescale_multiplier(accumulator_scale(input_scale, weight_scale), output_scale)


ACTIVATION_RANGES = {None: (None, None), "relu": (0.0, None), "relu6": (0.0, 6.0)}  # float clips that fuse


def clip_bounds(scale, zero_point: int, qmin: int, qmax: int, lo_value: float | None = None,
                hi_value: float | None = None) -> tuple[int, int]:
    """The integer bounds of a float clip (ReLU: lo 0; ReLU6: lo 0, hi 6) fused into a requantize
    to ``scale``/``zero_point``: quantizing is monotone, so clip-then-quantize equals
    quantize-then-clip at zero_point + rint(bound / scale), inside [qmin, qmax]."""
    s = np.float64(np.float32(scale))
    lo = qmin if lo_value is None else max(qmin, int(zero_point) + int(np.rint(lo_value / s)))
    hi = qmax if hi_value is None else min(qmax, int(zero_point) + int(np.rint(hi_value / s)))
    return lo, hi


def activation_clip_bounds(scale, zero_point: int, qmin: int, qmax: int, act: str | None) -> tuple[int, int]:
    """:func:`clip_bounds` of the activation ``act`` (None, "relu" or "relu6") fused into the requantize."""
    return clip_bounds(scale, zero_point, qmin, qmax, *ACTIVATION_RANGES[act])


def hard_gate_offsets(input_scale) -> tuple[int, int]:
    """(three, six): 3 and 6 as integers at the input's scale, for relu6(x + 3) computed as
    clip(q - z + three, 0, six) (Hardsigmoid, Hardswish)."""
    s = np.float64(np.float32(input_scale))
    three, six = int(np.rint(3.0 / s)), int(np.rint(6.0 / s))
    if six > 2**23:
        raise QuantizationError(f"input scale {s:g} is too fine for an integer Hardswish/Hardsigmoid (6/scale > 2^23)")
    return three, six


def hardsigmoid_multiplier(input_scale, output_scale) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) for relu6(x + 3) / 6: the clipped integer g is at scale S_x, so y = g * S_x / (6 S_y)."""
    return rescale_multiplier(np.float64(np.float32(input_scale)), output_scale, count=6)


def hardswish_multiplier(input_scale, output_scale) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) for x * relu6(x + 3) / 6: the product (q - z) * g is at scale S_x^2, so
    y = product * S_x^2 / (6 S_y)."""
    return rescale_multiplier(accumulator_scale(input_scale, np.float32(input_scale)), output_scale, count=6)


def product_multiplier(scale_a, scale_b, output_scale) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) for an elementwise product of two quantized tensors, (q_a - z_a)(q_b - z_b) at S_a S_b."""
    return rescale_multiplier(accumulator_scale(scale_a, np.float32(scale_b)), output_scale)
