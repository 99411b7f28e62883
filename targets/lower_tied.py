"""Tied weights: ``LinearTransposedWeight(X, W)``, which the ``tied_matmul`` pass
(``edgeq.targets.pre_tvm``) writes for ``MatMul(X, Transpose(W))`` with ``W`` an initializer
(LLaMA's lm_head, which shares the embedding table), reads ``W`` as ``[N, K]`` rows, so the
table is stored once (TVM would fold ``Transpose(W)`` into a second constant).
"""

from __future__ import annotations

from tvm import relax, te
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter
from edgeq.targets.pre_tvm.importer_ops import LINEAR_NT


def linear_nt_te(x, w):
    """``Y[m, n] = sum_k X[m, k] * W[n, k]``."""
    k = te.reduce_axis((0, x.shape[1]), name="k")
    return te.compute((x.shape[0], w.shape[0]), lambda i, j: te.sum(x[i, k] * w[j, k].astype(x.dtype), axis=k),
                      name="linear_nt")


@register_converter(LINEAR_NT)
class LinearTransposedWeight(OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, w = inputs
        shape = list(x.ty.shape)
        flat = bb.normalize(relax.op.reshape(x, (-1, shape[-1]))) if len(shape) != 2 else x
        y = bb.emit_te(linear_nt_te, flat, w, primfunc_name_hint="linear_nt")
        if len(shape) != 2:
            y = bb.normalize(relax.op.reshape(y, [*shape[:-1], w.ty.shape[0]]))
        return y
