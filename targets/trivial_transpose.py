"""A transpose that only moves dimensions of size 1 as a reshape: a Relax rewrite.

At decode (one query row) the attention's head transposes, ``[1, 1, heads, d] <-> [1, heads, 1,
d]``, keep every element where it was in memory: only a dimension of size 1 changes place. Each
was still a copy kernel of its own (at decode, the values' and the attention output's: 60 per
SmolLM2 step, each with a VM call, an allocation and a free). A ``reshape`` of the same shape is
a view in the VM (with the reshapes around it collapsed into one, Relax's
``RemoveRedundantReshape``: fused together they would be a copy kernel again). The rule: ``permute_dims(x, axes)`` with a static shape whose dimensions other
than 1 keep their order is ``reshape(x, the permuted shape)``; any other transpose (prefill's,
over the symbolic ``seq``) is left alone. The pattern is declared once.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from edgeq.targets.gqa_attention import known_shape


def trivial_transpose_pattern():
    """(the ``permute_dims`` call, its input's pattern)."""
    x = wildcard()
    return is_op("relax.permute_dims")(x), x


def moves_only_unit_dims(shape: list[int], axes: list[int]) -> bool:
    """Whether permuting ``shape`` by ``axes`` keeps the dimensions other than 1 in their order."""
    return [a for a in axes if shape[a] != 1] == [a for a in range(len(shape)) if shape[a] != 1]


def transposes_as_reshapes(mod: tvm.IRModule, functions) -> tvm.IRModule:
    """``mod`` with each transpose in the Relax ``functions`` (names) that moves only dimensions of
    size 1 a ``reshape``, and chains of reshapes collapsed."""
    pattern, x_pattern = trivial_transpose_pattern()

    def rewrite(call, matches):
        x = matches[x_pattern]
        shape = known_shape(x)
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            return call
        dims = [int(d) for d in shape]
        axes = list(range(len(dims)))[::-1] if call.attrs.axes is None else [int(a) % len(dims) for a in call.attrs.axes]
        if not moves_only_unit_dims(dims, axes):
            return call
        return relax.op.reshape(x, [dims[a] for a in axes])

    out = mod
    for name in functions:
        gv = out.get_global_var(name)
        out = out.clone() if out is mod else out
        out[gv] = rewrite_call(pattern, rewrite, out[gv])
    # a chain of reshapes is one view; fused together they would be a copy kernel again
    return relax.transform.RemoveRedundantReshape()(out)
