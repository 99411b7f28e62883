"""Lowering of packed low-bit linears: one TIR kernel that reads the packed uint8 weight, unpacks
each value with shifts and masks (``edgeq.maths.packing``'s layout), dequantizes it with its
group's scale and zero point and multiplies, so the artifact holds the packed bytes, never a
float32 copy of the weight.

Two ONNX forms reach it: edgeq's ``LowBitLinear`` op and standard ``DequantizeLinear`` of an
int4/uint4/int2/uint2 initializer feeding ``MatMul`` (rewritten to ``PackedLinear`` before
import by the ``pack_lowbit_matmul`` pass, ``edgeq.targets.pre_tvm``).

    Y[m, n] = sum_k X[m, k] * (q[n, k] - zeros[n, k // g]) * scales[n, k // g]  (+ bias[n])
"""

from __future__ import annotations

from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from edgeq.targets.importer import register_converter
from edgeq.targets.pre_tvm.importer_ops import PACKED_LINEAR


def unpacked_value(qweight, n, k, bits: int):
    """The unsigned integer at ``[n, k]`` of a packed uint8 weight, as int32 (a TIR expression)."""
    from tvm import tirx as tir

    byte = lambda i: qweight[n, i].astype("int32")  # noqa: E731
    if bits == 8:
        return byte(k)
    if bits in (4, 2):
        per_byte = 8 // bits
        shift = (k % per_byte) * bits
        return (byte(k // per_byte) >> shift.astype("int32")) & ((1 << bits) - 1)
    if bits == 3:
        # eight values in three bytes (a 24-bit little-endian word); value j sits at bit 3j and
        # may straddle two bytes. The second index is clamped: bits beyond it are masked off.
        unit, j = k // 8, k % 8
        first = unit * 3 + (j * 3) // 8
        second = unit * 3 + tir.min((j * 3) // 8 + 1, 2)
        word = byte(first) | (byte(second) << 8)
        return (word >> ((j * 3) % 8).astype("int32")) & 7
    raise ValueError(f"no unpacking for {bits} bits")


def packed_linear_te(x, qweight, scales, zeros, bias=None, *, bits: int, group_size: int):
    """TE compute of ``Y = X @ dequant(qweight).T (+ bias)`` for X ``[M, K]``; float32 out.

    Per group g: ``sum_k x·(q - z)·s = s·(sum_k x·q - z·sum_k x)``, so the inner loop only unpacks
    and multiplies; scale and zero point are applied once per group (``packed_linear_out``).
    """
    from tvm import te

    m, k_dim = x.shape
    n_dim = qweight.shape[0]
    groups = k_dim // group_size
    if bits in (2, 4, 8):
        # the reduction walks packed BYTES b and the values h within a byte; X is de-interleaved
        # once (xd[i, g, h, b] = x[i, g·G + b·per_byte + h]) so both loads are contiguous in b
        per_byte = 8 // bits
        nbytes = group_size // per_byte
        xd = te.compute((m, groups, per_byte, nbytes),
                        lambda i, g, h, b: x[i, g * group_size + b * per_byte + h].astype("float32"),
                        name="packed_linear_x")
        kb = te.reduce_axis((0, nbytes), name="kb")
        kh = te.reduce_axis((0, per_byte), name="kh")

        def byte_value(j, g, h, b):
            byte = qweight[j, g * nbytes + b].astype("int32")
            return ((byte >> (h * bits).astype("int32")) & ((1 << bits) - 1)).astype("float32")

        part = te.compute(
            (m, n_dim, groups),
            lambda i, j, g: te.sum(xd[i, g, kh, kb] * byte_value(j, g, kh, kb), axis=[kb, kh]),
            name="packed_linear",
            attrs={"edgeq_bits": bits, "edgeq_group": group_size},
        )
    else:
        kk = te.reduce_axis((0, group_size), name="k")
        part = te.compute(
            (m, n_dim, groups),
            lambda i, j, g: te.sum(x[i, g * group_size + kk].astype("float32")
                                   * unpacked_value(qweight, j, g * group_size + kk, bits).astype("float32"), axis=kk),
            name="packed_linear",
            attrs={"edgeq_bits": bits, "edgeq_group": group_size},
        )
    kx = te.reduce_axis((0, group_size), name="kx")
    xsum = te.compute((m, groups), lambda i, g: te.sum(x[i, g * group_size + kx].astype("float32"), axis=kx),
                      name="packed_linear_xsum")
    if groups == 1:
        # one group per row: no reduction of extent 1, which TVM's epilogue inlining (a fused bias
        # add) mistakes for a spatial block and then adds the bias in both its init and its update
        y = te.compute(
            (m, n_dim),
            lambda i, j: scales[j, 0].astype("float32") * (part[i, j, 0] - zeros[j, 0].astype("float32") * xsum[i, 0]),
            name="packed_linear_out",
        )
    else:
        gr = te.reduce_axis((0, groups), name="g")
        y = te.compute(
            (m, n_dim),
            lambda i, j: te.sum(scales[j, gr].astype("float32")
                                * (part[i, j, gr] - zeros[j, gr].astype("float32") * xsum[i, gr]), axis=gr),
            name="packed_linear_out",
        )
    if bias is None:
        return y
    return te.compute((m, n_dim), lambda i, j: y[i, j] + bias[j].astype("float32"), name="packed_linear_bias")


def emit_packed_linear(bb, x, qweight, scales, zeros, bias, bits: int, group_size: int):
    """Emit the packed kernel for X ``[..., K]``; returns ``[..., N]`` in X's type."""
    from tvm import relax

    shape = list(x.ty.shape)
    k_dim = shape[-1]
    n_dim = qweight.ty.shape[0]
    flat = bb.normalize(relax.op.reshape(x, (-1, k_dim))) if len(shape) != 2 else x
    args = [flat, qweight, scales, zeros] + ([bias] if bias is not None else [])
    fn = lambda *a: packed_linear_te(*a, bits=bits, group_size=group_size)  # noqa: E731
    y = bb.emit_te(fn, *args, primfunc_name_hint=f"packed_linear_w{bits}g{group_size}")
    if len(shape) != 2:
        y = bb.normalize(relax.op.reshape(y, [*shape[:-1], n_dim]))
    if x.ty.dtype.dtype != "float32":  # the op's output has X's type; the kernel accumulates in float32
        y = bb.normalize(relax.op.astype(y, x.ty.dtype.dtype))
    return y


def _attr_int(attr: dict, *names: str, default=None) -> int:
    for name in names:
        if name in attr:
            return int(attr[name])
    if default is None:
        raise KeyError(f"missing attribute {names[0]!r}")
    return default


@register_converter(PACKED_LINEAR)
class PackedLinear(OnnxOpConverter):
    """edgeq's internal form of a standard low-bit DequantizeLinear + MatMul."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, qweight, scales, zeros = inputs[0], inputs[1], inputs[2], inputs[3]
        bias = inputs[4] if len(inputs) > 4 else None
        bits = _attr_int(attr, "bits")
        group_size = _attr_int(attr, "group_size", "block_size", default=0)
        if not group_size:
            group_size = int(x.ty.shape[-1]) // int(scales.ty.shape[1])
        return emit_packed_linear(bb, x, qweight, scales, zeros, bias, bits, group_size)


@register_converter("LowBitLinear")
class LowBitLinear(PackedLinear):
    """edgeq's ``LowBitLinear``: the same inputs and attributes as ``PackedLinear``."""
