"""TVM converters for the integer-only ops TVM's ONNX importer lacks: ConvInteger and
``edgeq.DyadicRequantize``. Both compute in integers end to end (never through float), so an
integerized graph compiled by TVM gives the same integers as onnxruntime and the PyTorch
integer reference.

ConvInteger:       y_int32 = conv2d(x', int32(w) - w_zero_point),  x' = int32(x) - x_zero_point
                   (ONNX pads with the zero point, i.e. with 0 in x'). One TE reduction that
                   widens and shifts the weight inside the kernel: the weight constant stays
                   in its stored 8-bit dtype instead of being folded into an int32 copy.
DyadicRequantize:  y = clip(((int64(x) * b + 2^(c-1)) >> c) + zero_point, lo, hi), one elementwise TE
                   kernel: the int32 constants are widened inside it, not stored widened
                   (the rounding contract in ``edgeq.opset.dyadic``; ``>>`` is arithmetic)
"""

from __future__ import annotations

import tvm
from tvm import relax, te, topi
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter


@register_converter("ConvInteger")
class ConvInteger(OnnxOpConverter):
    """ONNX ConvInteger (2-D) as one int32 reduction."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, w = inputs[0], inputs[1]
        x_zp = inputs[2] if len(inputs) > 2 else None
        w_zp = inputs[3] if len(inputs) > 3 else relax.const(0, "int32")
        if len(x.ty.shape) != 4:
            raise NotImplementedError(f"ConvInteger: only 2-D convolutions (NCHW) are lowered, got rank {len(x.ty.shape)}")
        auto_pad = attr.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            raise NotImplementedError(f"ConvInteger: auto_pad={auto_pad} is not lowered; write explicit pads")
        x = relax.op.astype(x, "int32")
        if x_zp is not None:
            x = bb.normalize(relax.op.subtract(x, relax.op.astype(x_zp, "int32")))
        pads = [0, 0, 0, 0] if auto_pad == "VALID" else [int(p) for p in attr.get("pads", [0, 0, 0, 0])]
        strides = [int(s) for s in attr.get("strides", [1, 1])]
        dilations = [int(d) for d in attr.get("dilations", [1, 1])]
        groups = int(attr.get("group", 1))

        def conv_integer(x, w, w_zp):
            n, padded, out_h, out_w, (rc, ry, rx) = conv2d_window(x, w, pads, strides, dilations)
            out_ch, per_group = (int(d) for d in w.shape[:2])
            out_per_group = out_ch // groups

            def zero_point(o):
                return w_zp[o] if len(w_zp.shape) == 1 else w_zp()

            return te.compute(
                (n, out_ch, out_h, out_w),
                lambda b, o, i, j: te.sum(
                    padded[b, o // out_per_group * per_group + rc, i * strides[0] + ry * dilations[0], j * strides[1] + rx * dilations[1]]
                    * (w[o, rc, ry, rx].astype("int32") - zero_point(o).astype("int32")),
                    axis=[rc, ry, rx],
                ),
                name="conv_integer",
            )

        return bb.emit_te(conv_integer, x, w, w_zp, primfunc_name_hint="conv_integer")


@register_converter("DyadicRequantize")
class DyadicRequantize(OnnxOpConverter):
    """``edgeq.DyadicRequantize`` in int64 with an arithmetic right shift: one elementwise TE
    kernel that widens the int32 multiplier, shift and zero point inside the kernel, so the
    per-channel constants stay int32 in the artifact (Relax folds a cast of a constant into a
    widened copy)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        lo, hi = int(attr["lo"]), int(attr["hi"])

        def requantize(x, multiplier, shift, zero_point):
            def at(t, index):  # numpy broadcasting: right-aligned, size-1 dims read index 0
                dims = list(t.shape)
                tail = index[len(index) - len(dims):] if dims else []
                return t[tuple(0 if int(d) == 1 else i for d, i in zip(dims, tail))] if dims else t()

            def element(*index):
                i64 = "int64"
                s = at(shift, index).astype(i64)
                t = x[index].astype(i64) * at(multiplier, index).astype(i64) + (tvm.tirx.const(1, i64) << (s - 1))
                y = (t >> s) + at(zero_point, index).astype(i64)
                return tvm.tirx.max(tvm.tirx.min(y, tvm.tirx.const(hi, i64)), tvm.tirx.const(lo, i64)).astype("int32")

            return te.compute(x.shape, element, name="dyadic_requantize")

        return bb.emit_te(requantize, *inputs, primfunc_name_hint="dyadic_requantize")


def conv2d_window(x, w, pads, strides, dilations):
    """The NCHW conv geometry both 8-bit conv kernels share: batch, the padded input, the output
    height and width, and the (channel, kernel-y, kernel-x) reduction axes."""
    n, _, height, width = x.shape
    _, per_group, kh, kw = (int(d) for d in w.shape)
    padded = topi.nn.pad(x, [0, 0, pads[0], pads[1]], [0, 0, pads[2], pads[3]])
    out_h = (height + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return n, padded, out_h, out_w, (te.reduce_axis((0, per_group)), te.reduce_axis((0, kh)), te.reduce_axis((0, kw)))
