"""``edgeq.Hadamard``: an orthonormal (optionally randomized) Hadamard transform over the last
axis, applied to each contiguous block of ``size`` values.

    H_n = kron(H_f1, ..., H_fm) / sqrt(n),   n = 2^k * product of factors in {12, 20, 28}
    Y[..., block] = (X[..., block] * Signs[block]) @ H_n

H_n is ``edgeq.maths.hadamard.hadamard_matrix(n)`` (Sylvester for powers of two, Paley I for 12
and 20, Paley II for 28; the 12/20/28 factors first), as used by ``OnlineHadamard``. The
function body never builds H_n: it reshapes rows to [rows, n/f_i, f_i], MatMuls by each small
factor (at most 64 x 64) and rotates the axes (Transpose), so the file holds a few KB of
constants and the work is O(n * sum f_i) per row instead of O(n^2).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import values

from edgeq.maths.hadamard import hadamard_factors, hadamard_matrix
from edgeq.opset._function import FunctionBuilder
from edgeq.opset.registry import DOMAIN, OPSET_VERSION, EdgeqOp, register_op, register_translation

MAX_FACTOR = 64


def factorization(n: int) -> list[int]:
    """Orders of the small factors whose Kronecker product (in order) is edgeq's H_n: the factors
    of ``edgeq.maths.hadamard.hadamard_factors`` with the power of two split into pieces of at most
    64 (a Kronecker product of Sylvester matrices is the larger Sylvester matrix)."""
    factors: list[int] = []
    for f in hadamard_factors(n):
        while f > MAX_FACTOR and f & (f - 1) == 0:
            factors.append(MAX_FACTOR)
            f //= MAX_FACTOR
        factors.append(f)
    return factors


def factor_matrix(f: int) -> np.ndarray:
    """The orthonormal factor H_f / sqrt(f) (float64)."""
    return hadamard_matrix(f, torch.float64).numpy()


def dense_hadamard(n: int) -> np.ndarray:
    """Dense orthonormal H_n (float64), the reference."""
    return hadamard_matrix(n, torch.float64).numpy()


SCHEMA = OpSchema(
    "Hadamard", DOMAIN, OPSET_VERSION,
    doc="Y = (X * Signs) @ H_size on each contiguous block of `size` values of the last axis.",
    inputs=[
        OpSchema.FormalParameter("X", "T", "[..., D], D a multiple of size"),
        OpSchema.FormalParameter("Signs", "T", "±1 per position of the last axis [D] (randomized Hadamard)",
                                 param_option=OpSchema.FormalParameterOption.Optional),
    ],
    outputs=[OpSchema.FormalParameter("Y", "T", "[..., D]")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float type")],
    attributes=[OpSchema.Attribute("size", OpSchema.AttrType.INT, "block length n: 2^k times a product of 12, 20, 28")],
)

DOC = """\
The body applies H_n = kron(F_1, ..., F_r), F_i = H_fi / sqrt(fi), with the 12/20/28 factors
first, then Sylvester factors of at most 64; the product is orthonormal (Y @ H_n^T undoes it).
H_12 and H_20 are not symmetric: the transform multiplies rows on the right. `size` equal to D transforms
the whole axis; a smaller size transforms blocks (e.g. per attention head).
"""


def function(attrs: dict, opset: int) -> onnx.FunctionProto:
    n = int(attrs["size"])
    has_signs = attrs.get("num_inputs", 1) >= 2
    b = FunctionBuilder("Hadamard", ["X"] + (["Signs"] if has_signs else []), ["Y"], ["size"], opset)
    x = b.op("Mul", "X", "Signs") if has_signs else "X"
    y = b.op("Reshape", x, b.const([-1, n], np.int64))
    for f in reversed(factorization(n)):
        if f == 1:
            continue
        rows = b.op("Reshape", y, b.const([-1, n // f, f], np.int64))
        mixed = b.op("MatMul", rows, b.op("CastLike", b.const(factor_matrix(f), np.float32), "X"))
        y = b.op("Reshape", b.op("Transpose", mixed, perm=[0, 2, 1]), b.const([-1, n], np.int64))
    b.op("Reshape", y, b.op("Shape", "X"), out="Y")
    return b.build()


def reference(x, signs=None, *, size: int) -> np.ndarray:
    xs = x.astype(np.float64) * (1 if signs is None else signs.astype(np.float64))
    y = xs.reshape(-1, size) @ dense_hadamard(size)
    return y.reshape(x.shape).astype(x.dtype)


OP = register_op(EdgeqOp("Hadamard", SCHEMA, function, reference, DOC))


@torch.library.custom_op("edgeq::hadamard", mutates_args=())
def hadamard(x: torch.Tensor, signs: torch.Tensor | None, size: int) -> torch.Tensor:
    """The factored transform in PyTorch (same steps as the function body)."""
    y = x if signs is None else x * signs.to(x.dtype)
    shape = y.shape
    y = y.reshape(-1, size)
    for f in reversed(factorization(size)):
        if f == 1:
            continue
        h = torch.from_numpy(factor_matrix(f)).to(x.dtype)
        y = (y.reshape(-1, size // f, f) @ h).transpose(1, 2).reshape(-1, size)
    return y.reshape(shape).clone()


@hadamard.register_fake
def _(x, signs, size):
    return torch.empty_like(x)


_EDGEQ = values.Opset(DOMAIN, OPSET_VERSION)


def _onnx_hadamard(x, signs=None, size: int = 1):
    if signs is None:
        return _EDGEQ.Hadamard(x, size=size)
    return _EDGEQ.Hadamard(x, signs, size=size)


register_translation(torch.ops.edgeq.hadamard.default, _onnx_hadamard)
