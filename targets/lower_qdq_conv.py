"""QDQ convolutions that keep their 8-bit weights: a ``DequantizeLinear`` of an int8/uint8 4-D
weight initializer (per output channel or per tensor) that feeds only ``Conv`` weight inputs
becomes one ``QConv`` node before import (the ``qdq_conv`` pass, ``edgeq.targets.pre_tvm``), lowered to one TE reduction that reads
the 8-bit weight and applies the zero point and scale inside the kernel. The stock importer
would fold the dequantization into a float32 copy of the weight (4x the bytes).

    Y[b, o, i, j] = s[o] * sum_{c, y, x} X[b, c', i·sh + y·dh, j·sw + x·dw] * (q[o, c, y, x] - z[o])  (+ bias[o])

The scale is factored out of the sum, so the result differs from onnxruntime's (which
dequantizes first) by float rounding only.
"""

from __future__ import annotations

from tvm import relax, te
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter
from edgeq.targets.integer_ops import conv2d_window
from edgeq.targets.pre_tvm.importer_ops import QCONV


@register_converter(QCONV)
class QConv(OnnxOpConverter):
    """``QConv`` (x, 8-bit weight, scale, zero point, bias): one float32 TE reduction."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, weight, scale = inputs[0], inputs[1], inputs[2]
        zero = inputs[3] if inputs[3] is not None else relax.const(0, "int32")
        bias = inputs[4]
        pads = [int(p) for p in attr.get("pads", [0, 0, 0, 0])]
        strides = [int(s) for s in attr.get("strides", [1, 1])]
        dilations = [int(d) for d in attr.get("dilations", [1, 1])]
        groups = int(attr.get("group", 1))

        def qconv(x, w, scale, zero, *bias):
            n, padded, out_h, out_w, (rc, ry, rx) = conv2d_window(x, w, pads, strides, dilations)
            out_ch, per_group = (int(d) for d in w.shape[:2])
            out_per_group = out_ch // groups

            def per_channel(t, o):
                return t[o] if len(t.shape) == 1 else t()

            acc = te.compute(
                (n, out_ch, out_h, out_w),
                lambda b, o, i, j: te.sum(
                    padded[b, o // out_per_group * per_group + rc, i * strides[0] + ry * dilations[0], j * strides[1] + rx * dilations[1]]
                    * (w[o, rc, ry, rx].astype("int32") - per_channel(zero, o).astype("int32")).astype(x.dtype),
                    axis=[rc, ry, rx],
                ),
                name="qconv_acc",
            )

            def out(b, o, i, j):
                y = acc[b, o, i, j] * per_channel(scale, o).astype(x.dtype)
                return y + bias[0][o].astype(x.dtype) if bias else y

            return te.compute(acc.shape, out, name="qconv")

        args = [x, weight, scale, zero] + ([bias] if bias is not None else [])
        return bb.emit_te(qconv, *args, primfunc_name_hint="qdq_conv2d")  # "conv2d" names it in profiles
