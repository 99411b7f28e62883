"""The packed low-bit linear (``lower_lowbit``'s kernel) on CPU: rebuilt as the lane kernel (one
row at a time), the packed GEMM (16 rows or more, static) or, with ``act_bits=8`` where the target
has a byte dot product, the int8-activation kernel; 3-bit weights and groups narrower than the
lanes keep the original compute under an rfactor schedule (``edgeq.targets.schedule_lowbit``).

The kernel is recognized by its buffers and its reduction, not by a block name: X ``[M, K]``, a
uint8 weight ``[N, K·bits/8]``, scales and zero points ``[N, K/group]``, an optional bias
``[N]``, Y ``[M, N]`` float32, and a reduction that reads the uint8 weight. With symbolic
dimensions (shape parameters besides the buffers) the original compute keeps the rfactor schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule

from edgeq.targets import int8_lowbit, schedule_lowbit


@dataclass(frozen=True)
class PackedLinearShape:
    bits: int
    group: int
    rows: int | None  # M when static
    weight_reduction: s_tir.schedule.SBlockRV  # the block that reduces over the packed weight
    static: bool  # no shape parameters (symbolic batch, seq): the rebuilt kernels need none


def _static(dim) -> int | None:
    return int(dim) if isinstance(dim, tirx.IntImm) else None


def match_packed_linear(sch: s_tir.Schedule, func: tirx.PrimFunc) -> PackedLinearShape | None:
    """The packed linear's bits, group and weight reduction, or None for any other function."""
    params = [p for p in func.params if _is_buffer(p)]
    if len(params) not in (5, 6):
        return None
    x, qweight, scales, zeros, *_bias, y = params
    if (str(qweight.dtype) != "uint8" or str(y.dtype) != "float32"
            or any(len(p.shape) != 2 for p in (x, qweight, scales, zeros, y))):
        return None
    k_dim, k_bytes, groups = _static(x.shape[1]), _static(qweight.shape[1]), _static(scales.shape[1])
    if not (k_dim and k_bytes and groups) or k_dim % groups or (k_bytes * 8) % k_dim:
        return None
    bits = k_bytes * 8 // k_dim
    if bits not in (2, 3, 4, 8):
        return None
    blocks = sch.get_child_blocks(get_root_block(sch))
    if any(not sch.get(b).name_hint.startswith("packed_linear") for b in blocks):
        # FuseOps merged other ops into it (a 2-D linear followed by tanh, as BERT's pooler): the
        # kernels are rebuilt from the linear's parameters alone and would drop them
        return None
    for block in blocks:
        stmt = sch.get(block)
        reduces = any(iv.iter_type == tirx.IterVar.CommReduce for iv in stmt.iter_vars)
        if reduces and any(r.source.same_as(qweight) for r in stmt.reads):
            return PackedLinearShape(bits, k_dim // groups, _static(x.shape[0]), block,
                                     static=len(params) == len(func.params))
    return None


def _is_buffer(param) -> bool:
    try:
        param.dtype  # only buffer parameters have one; scalar (shape) parameters raise
    except AttributeError:
        return False
    return True


class PackedLinear(ScheduleRule):
    """Packed low-bit linears; ``act_bits=8``: int8-activation kernels where the target has a
    byte dot product and the weights' bits and group fit it."""

    def __init__(self, act_bits: int = 32):
        self.act_bits = act_bits

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        shape = match_packed_linear(sch, func)
        if shape is None:
            return None
        bits, group = shape.bits, shape.group
        isa = int8_lowbit.dot_isa(target) if self.act_bits == 8 else None
        width = int8_lowbit.vector_bytes(isa, bits, group) if isa and shape.static else 0
        if width:
            return s_tir.Schedule(int8_lowbit.int8_kernel(func, bits, group, isa, width))
        lanes = schedule_lowbit.lane_count(bits, group) if shape.static else 0
        if lanes:
            rows = shape.rows
            if rows and rows >= schedule_lowbit.GEMM_MIN_ROWS and rows % schedule_lowbit.GEMM_ROW_TILE == 0:
                return s_tir.Schedule(schedule_lowbit.gemm_kernel(func, bits, group))
            return s_tir.Schedule(schedule_lowbit.lane_kernel(func, bits, group, lanes))
        return sch if schedule_lowbit.schedule_rfactor(sch, shape.weight_reduction) else None
