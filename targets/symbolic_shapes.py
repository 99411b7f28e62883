"""Converters for the symbolic shape arithmetic of torch's dynamo export.

The stock importer carries a shape as a ``relax.ShapeExpr`` and a scalar taken out of one (a
``Squeeze`` or ``Gather`` of ``Shape``) as a primitive expression (``seq + 1``), but several converters reject a
``PrimValue`` input. A decoder LM's export reshapes ``seq + 1`` to ``[1]`` to slice the causal
mask with it; these converters keep such values symbolic (a ``ShapeExpr`` of one element), so the
Relax module takes any sequence length through one symbolic variable.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from edgeq.targets.importer import register_converter


def _prim(value):
    """The PrimExpr inside a symbolic scalar value, or None when ``value`` is not one."""
    if tvm.ir.is_prim_expr(value):
        return value
    return None


@register_converter("Reshape")
class SymbolicReshape(onnx_frontend.Reshape):
    """Reshape of a symbolic scalar to ``[1]``/``[-1]`` (a one-element shape) or ``[]``."""

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        scalar = _prim(inputs[0])
        if scalar is not None and isinstance(inputs[1], tvm.ir.GenericConst):
            target = inputs[1].value.numpy().tolist()
            if target in ([1], [-1]):
                return relax.ShapeExpr([scalar])
            if target == []:
                return scalar
        return super()._impl_v13(bb, inputs, attr, params)


@register_converter("Expand")
class SymbolicExpand(onnx_frontend.Expand):
    """Expand by a constant shape of a tensor with symbolic dimensions: taken as a ``ShapeExpr``
    (whose broadcasting rules keep a symbolic dimension where the target says 1)."""

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, shape = inputs[0], inputs[1]
        dims = getattr(data.ty, "shape", None)
        dims = list(dims.values) if isinstance(dims, relax.ShapeExpr) else None
        if isinstance(shape, tvm.ir.GenericConst) and dims and not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            target = [int(d) for d in shape.value.numpy().tolist()]
            target = [1] * (len(dims) - len(target)) + target
            shape = relax.ShapeExpr([tvm.tirx.IntImm("int64", d) for d in target])
        return super()._impl_v13(bb, [data, shape], attr, params)


@register_converter("Range")
class SymbolicRange(onnx_frontend.Range):
    """Integer Range with constant start and step up to a symbolic limit (``arange(seq)``): one
    ``arange`` whose length is an expression of the limit, so the positions share the sequence
    variable with the activations instead of getting a fresh length variable."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        start, limit, delta = inputs[0], inputs[1], inputs[2]
        if (isinstance(start, tvm.ir.GenericConst) and isinstance(delta, tvm.ir.GenericConst)
                and _prim(limit) is not None and start.value.numpy().dtype.kind in "iu"):
            dtype = str(start.value.numpy().dtype)
            return relax.op.arange(int(start.value.numpy()), limit, int(delta.value.numpy()), dtype)
        return super()._impl_v12(bb, inputs, attr, params)
