"""``edgeq.Hadamard``: an orthonormal (optionally randomized) Hadamard transform over the last
axis, applied to each contiguous block of ``size`` values.

    H_n = kron(H_f, H_{2^m}) / sqrt(n),   n = f * 2^m,  f in {1, 12, 20, 28}
    Y[..., block] = (X[..., block] * Signs[block]) @ H_n

H_{2^m} is Sylvester's; H_12 and H_20 are Paley I (q = 11, 19), H_28 Paley II (q = 13). The
function body never builds H_n: it reshapes rows to [rows, n/f_i, f_i], MatMuls by each small
factor (at most 64 x 64) and rotates the axes (Transpose), so the file holds a few KB of
constants and the work is O(n * sum f_i) per row instead of O(n^2).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import values

from edgeq.opset import DOMAIN, OPSET_VERSION, EdgeqOp, register_op, register_translation
from edgeq.opset._function import FunctionBuilder

SPECIAL_FACTORS = (12, 20, 28)
MAX_FACTOR = 64


def _jacobsthal(q: int) -> np.ndarray:
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in squares else -1 for i in range(1, q)])
    return np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])


@lru_cache(maxsize=None)
def special_hadamard(f: int) -> np.ndarray:
    """The ±1 Hadamard matrix of order 12, 20 (Paley I) or 28 (Paley II)."""
    if f in (12, 20):
        q = f - 1
        s = np.zeros((f, f), dtype=np.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        h = s + np.eye(f, dtype=np.int64)
    elif f == 28:
        q = 13
        c = np.zeros((q + 1, q + 1), dtype=np.int64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        h = np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(q + 1, dtype=np.int64), np.array([[1, -1], [-1, -1]]))
    else:
        raise ValueError(f"no special Hadamard factor of order {f}")
    assert (h @ h.T == f * np.eye(f)).all()
    return h


def sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def factorization(n: int) -> list[int]:
    """Orders of the small factors whose Kronecker product (in order) is H_n."""
    special = next((f for f in SPECIAL_FACTORS if n % f == 0 and _is_pow2(n // f)), None)
    if special is None and not _is_pow2(n):
        raise ValueError(f"no Hadamard transform of size {n}: need f * 2^m with f in (1, 12, 20, 28)")
    rest = n // (special or 1)
    factors = [special] if special else []
    while rest > 1:
        factors.append(min(rest, MAX_FACTOR))
        rest //= factors[-1]
    return factors or [1]


def factor_matrix(f: int) -> np.ndarray:
    return (special_hadamard(f) if f in SPECIAL_FACTORS else sylvester(f)).astype(np.float64) / math.sqrt(f)


def hadamard_matrix(n: int) -> np.ndarray:
    """Dense orthonormal H_n (float64), the reference."""
    h = np.ones((1, 1))
    for f in factorization(n):
        h = np.kron(h, factor_matrix(f))
    return h


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


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
    attributes=[OpSchema.Attribute("size", OpSchema.AttrType.INT, "block length n = f * 2^m, f in {1, 12, 20, 28}")],
)

DOC = """\
H_n = kron(F_1, ..., F_r) with F_1 = H_f/sqrt(f) for f in {12, 20, 28} when n has that factor,
then Sylvester factors of at most 64; the product is orthonormal (Y @ H_n^T undoes it). H_12 and
H_20 are not symmetric: the transform multiplies rows on the right. `size` equal to D transforms
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
    y = xs.reshape(-1, size) @ hadamard_matrix(size)
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
