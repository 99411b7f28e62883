"""CPU schedule for the packed low-bit linear (``lower_lowbit``): the default pipeline applies
none, leaving one scalar thread. Rows of the output are split across threads; the reduction over
K is split into vector lanes (rfactor), so each lane unpacks contiguous packed bytes, and the
lanes are summed at the end of each output element. Written on loops only, so LLVM emits AVX2 on
x86-64 and NEON on arm64 from the same schedule.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

BLOCK = "packed_linear"
LANES = 16


def schedule_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Schedule every PrimFunc of ``mod`` that holds a packed-linear block (CPU targets only)."""
    if "cpu" not in target.keys:
        return mod
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        try:
            block = sch.get_sblock(BLOCK)
        except Exception:  # no such block in this function
            continue
        if _schedule(sch, block):
            mod[gv] = sch.mod["main"]
    return mod


def _schedule(sch, block) -> bool:
    loops = sch.get_loops(block)
    if len(loops) != 3:
        return False
    bits = int(sch.get(block).annotations.get("edgeq_bits", 8))
    per_byte = 8 // bits if bits in (2, 4, 8) else 1  # values in one byte: the innermost k split
    i, j, k = loops
    extent = sch.get(k).extent
    if not isinstance(extent, tvm.tirx.IntImm) or extent.value % (LANES * per_byte):
        return False
    # k = (ko, kv, kh): kv indexes consecutive packed BYTES (contiguous vector loads), kh the
    # value within a byte (a constant shift once unrolled)
    kv = sch.split(k, [None, LANES, per_byte] if per_byte > 1 else [None, LANES])[1]
    rf = sch.rfactor(kv, 0)  # partial sums per lane: rf[kv, i, j] over (ko, kh)
    i, j = sch.get_loops(block)[:2]
    fused = sch.fuse(i, j)
    sch.parallel(fused)
    sch.compute_at(rf, fused)
    lane, outer, *within = sch.get_loops(rf)[1:]  # compute_at keeps the rf block's order
    sch.reorder(outer, *within, lane)
    if within:
        sch.unroll(within[0])
    sch.vectorize(lane)
    sch.set_scope(rf, 0, "local")
    sch.decompose_reduction(rf, outer)  # zero the lanes once, outside the K loop
    return True
