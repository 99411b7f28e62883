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
    """``block`` computes part[i, j, g] = sum x·q over group g, reducing over packed bytes (and
    the values within a byte) or, for 3 bits, over k; ``packed_linear_out`` reduces the groups
    with their scales and zero points into y[i, j]."""
    loops = sch.get_loops(block)
    if len(loops) not in (4, 5):
        return False
    lanes_loop = loops[3]  # bytes (2/4/8 bits) or k (3 bits)
    extent = sch.get(lanes_loop).extent
    if not isinstance(extent, tvm.tirx.IntImm) or extent.value % LANES:
        return False
    out = sch.get_sblock("packed_linear_out")
    i, j, _ = sch.get_loops(out)
    fused = sch.fuse(i, j)
    sch.parallel(fused)
    kv = sch.split(lanes_loop, [None, LANES])[1]
    rf = sch.rfactor(kv, 0)  # partial sums per lane: rf[kv, i, j, g]
    sch.compute_at(block, fused)
    sch.compute_at(rf, fused)
    lane, group, outer, *within = sch.get_loops(rf)[1:]  # compute_at keeps the rf block's order
    sch.reorder(group, outer, *within, lane)
    if within:
        sch.unroll(within[0])
    sch.vectorize(lane)
    sch.set_scope(rf, 0, "local")
    sch.set_scope(block, 0, "local")
    sch.decompose_reduction(rf, outer)  # zero the lanes once per group, outside the K loop
    return True
