"""TVM converters for the integer-only ops TVM's ONNX importer lacks: ConvInteger and
``edgeq.DyadicRequantize``. Both compute in integers end to end (never through float), so an
integerized graph compiled by TVM gives the same integers as onnxruntime and the PyTorch
integer reference.

ConvInteger:       y_int32 = conv2d(x', w) - w_zero_point[o] * conv2d(x', ones),  x' = int32(x) - x_zero_point
                   (= conv2d(x', w - w_zero_point); ONNX pads with the zero point, i.e. with 0
                   in x'. The weight stays in its stored 8-bit dtype: casting and shifting it
                   would be constant-folded into an int32 copy four times its size.)
DyadicRequantize:  y = clip(((int64(x) * b + 2^(c-1)) >> c) + zero_point, lo, hi)
                   (the rounding contract in ``edgeq.opset.dyadic``; ``>>`` is arithmetic)
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, topi
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter


def _output_channel_zero_point(bb, zp):
    """An int32 weight zero point shaped to broadcast over NCHW outputs ([O] -> [1, O, 1, 1])."""
    zp = bb.normalize(relax.op.astype(zp, "int32"))
    if len(zp.ty.shape) == 1:
        zp = relax.op.reshape(zp, [1, -1, 1, 1])
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
            x = bb.normalize(relax.op.subtract(x, relax.op.astype(x_zp, "int32")))
        groups = int(attr.get("group", 1))
        conv = dict(
            strides=list(attr.get("strides", [1, 1])),
            padding=[0, 0, 0, 0] if auto_pad == "VALID" else list(attr.get("pads", [0, 0, 0, 0])),
            dilation=list(attr.get("dilations", [1, 1])),
            groups=groups, data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32",
        )
        y = relax.op.nn.conv2d(x, w, **conv)
        if w_zp is None:
            return y
        out_ch, in_per_group, kh, kw = (int(d) for d in w.ty.shape)
        # window sums of x' (one output channel suffices without groups)
        ones = np.ones((1 if groups == 1 else out_ch, in_per_group, kh, kw), dtype=np.int8)
        window = relax.op.nn.conv2d(x, relax.const(ones), **conv)
        return relax.op.subtract(y, relax.op.multiply(_output_channel_zero_point(bb, w_zp), window))


@register_converter("DyadicRequantize")
class DyadicRequantize(OnnxOpConverter):
    """``edgeq.DyadicRequantize`` in int64 with an arithmetic right shift, as one TE function:
    the per-channel multiplier and shift constants enter it in their stored int32 and are
    widened inside the kernel, not folded into int64 copies."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, multiplier, shift, zero_point = inputs
        lo, hi = int(attr["lo"]), int(attr["hi"])

        def requantize(x, m, s, zp):
            i64 = "int64"
            one = tvm.tirx.const(1, i64)
            s64 = topi.cast(s, i64)
            t = topi.add(topi.multiply(topi.cast(x, i64), topi.cast(m, i64)), topi.left_shift(one, topi.subtract(s64, one)))
            y = topi.add(topi.right_shift(t, s64), topi.cast(zp, i64))
            return topi.cast(topi.clip(y, lo, hi), "int32")

        return bb.emit_te(requantize, x, multiplier, shift, zero_point, primfunc_name_hint="dyadic_requantize")
