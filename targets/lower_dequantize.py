"""Blocked ``DequantizeLinear``, which the stock importer cannot take: converted here with its
scales repeated along the block axis. Low-bit DequantizeLinear + MatMul never gets here: the
``pack_lowbit_matmul`` pass (``edgeq.targets.pre_tvm``) makes it a ``PackedLinear`` and widens
the other 2/4-bit initializers.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import get_type

from edgeq.targets.importer import register_converter


@register_converter("DequantizeLinear")
class BlockedDequantizeLinear(onnx_frontend.DequantizeLinear):
    """Blocked DequantizeLinear (opset 21+): scales and zero points repeated along the block
    axis; the unblocked forms go to the stock converter."""

    @classmethod
    def _impl_v21(cls, bb, inputs, attr, params):
        if not attr.get("block_size", 0):
            return super()._impl_v21(bb, inputs, attr, params)
        return cls._blocked(inputs, attr, inputs[1].ty.dtype.dtype)

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        if not attr.get("block_size", 0):
            return super()._impl_v23(bb, inputs, attr, params)
        output_dtype = attr.get("output_dtype", 0)
        return cls._blocked(inputs, attr, get_type(output_dtype) if output_dtype else inputs[1].ty.dtype.dtype)

    @staticmethod
    def _blocked(inputs, attr, out_dtype):
        x, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        block = attr["block_size"]
        ndim = len(x.ty.shape)
        axis = attr.get("axis", 1) % ndim
        extent = x.ty.shape[axis]

        def widen(t):
            return relax.op.strided_slice(relax.op.repeat(t, block, axis), [axis], [0], [extent])

        xf = relax.op.astype(x, "float32")
        if zp is not None:
            xf = relax.op.subtract(xf, relax.op.astype(widen(zp), "float32"))
        return relax.op.astype(relax.op.multiply(xf, relax.op.astype(widen(scale), "float32")), out_dtype)
