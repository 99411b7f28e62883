"""TVM converters for the integer-only ops TVM's ONNX importer lacks: ConvInteger and
``edgeq.DyadicRequantize``. Both compute in integers end to end (never through float), so an
integerized graph compiled by TVM gives the same integers as onnxruntime and the PyTorch
integer reference.

ConvInteger:       y_int32 = conv2d(int32(x) - x_zero_point, int32(w) - w_zero_point)
                   (ONNX pads with the zero point, i.e. with 0 after the subtraction)
DyadicRequantize:  y = clip(((int64(x) * b + 2^(c-1)) >> c) + zero_point, lo, hi)
                   (the rounding contract in ``edgeq.opset.dyadic``; ``>>`` is arithmetic)
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter


def _zero_point(bb, zp, ndim_hint: int):
    """An int32 zero point shaped to broadcast over NCHW channels ([C] -> [C, 1, 1, 1])."""
    zp = bb.normalize(relax.op.astype(zp, "int32"))
    if len(zp.ty.shape) == 1:
        zp = relax.op.reshape(zp, [-1] + [1] * (ndim_hint - 1))
    return zp


@register_converter("ConvInteger")
class ConvInteger(OnnxOpConverter):
    """ONNX ConvInteger (2-D) as an int32 conv2d."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, w = inputs[0], inputs[1]
        x_zp = inputs[2] if len(inputs) > 2 else None
        w_zp = inputs[3] if len(inputs) > 3 else None
        if len(x.ty.shape) != 4:
            raise NotImplementedError(f"ConvInteger: only 2-D convolutions (NCHW) are lowered, got rank {len(x.ty.shape)}")
        auto_pad = attr.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            raise NotImplementedError(f"ConvInteger: auto_pad={auto_pad} is not lowered; write explicit pads")
        x = relax.op.astype(x, "int32")
        if x_zp is not None:
            x = relax.op.subtract(x, relax.op.astype(x_zp, "int32"))
        w = relax.op.astype(w, "int32")
        if w_zp is not None:
            w = relax.op.subtract(w, _zero_point(bb, w_zp, 4))
        pads = [0, 0, 0, 0] if auto_pad == "VALID" else list(attr.get("pads", [0, 0, 0, 0]))
        return relax.op.nn.conv2d(
            x, w,
            strides=list(attr.get("strides", [1, 1])),
            padding=pads,
            dilation=list(attr.get("dilations", [1, 1])),
            groups=int(attr.get("group", 1)),
            data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32",
        )


@register_converter("DyadicRequantize")
class DyadicRequantize(OnnxOpConverter):
    """``edgeq.DyadicRequantize`` in int64 with an arithmetic right shift."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, multiplier, shift, zero_point = inputs
        i64 = "int64"
        x = relax.op.astype(x, i64)
        m = relax.op.astype(multiplier, i64)
        s = relax.op.astype(shift, i64)
        one = relax.const(1, i64)
        half = relax.op.left_shift(one, relax.op.subtract(s, one))
        t = relax.op.add(relax.op.multiply(x, m), half)
        y = relax.op.add(relax.op.right_shift(t, s), relax.op.astype(zero_point, i64))
        y = relax.op.maximum(y, relax.const(int(attr["lo"]), i64))
        y = relax.op.minimum(y, relax.const(int(attr["hi"]), i64))
        return relax.op.astype(y, "int32")
