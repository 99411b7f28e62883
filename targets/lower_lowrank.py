"""Lowering of ``edgeq.LowRankLinear`` (LoPRo / LRQMM at inference):
``Y = X @ dequant(QWeight)ᵀ + (X @ U) @ V + Bias``. The base is the packed low-bit kernel of
``lower_lowbit`` (weights stay packed); the correction stays two thin matmuls (rank·(K+N) per row),
never folded into a dense weight."""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter
from edgeq.targets.lower_lowbit import emit_packed_linear


@register_converter("LowRankLinear")
class LowRankLinear(OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, qweight, scales, zeros, u, v = inputs[:6]
        bias = inputs[6] if len(inputs) > 6 else None
        base = emit_packed_linear(bb, x, qweight, scales, zeros, bias, int(attr["bits"]), int(attr["group_size"]))
        xf = relax.op.astype(x, "float32") if x.ty.dtype.dtype != "float32" else x
        thin = relax.op.matmul(relax.op.matmul(xf, relax.op.astype(u, "float32")), relax.op.astype(v, "float32"))
        y = relax.op.add(base, thin)
        return relax.op.astype(y, x.ty.dtype.dtype) if x.ty.dtype.dtype != "float32" else y
