"""Softmax-like chains on the same rows: one parallel row loop, exp once per element."""

from __future__ import annotations

from tvm import s_tir

from edgeq.targets.schedules._loops import LoopRule, loop_extent, vectorize_tail, worth_threads



def _rows(func, target, lanes):
    """Softmax-like functions (at least two reductions, all blocks on the same rows, ending
    elementwise): one parallel row loop with every block computed at it, injective blocks vectorized."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)  # no inlining: exp stays one vectorized pass per row
    if not infos or len(infos) < 3 or sum(not info.is_injective() for info in infos) < 2:
        return None
    last = infos[-1]
    if not last.is_injective():
        return None
    out_loops = sch.get_loops(last.block_rv)
    row_extents = [loop_extent(sch, lp) for lp in out_loops[:-1]]
    if not out_loops or None in row_extents:
        return None
    for info in infos:  # every block: the same leading row loops, then one loop over the row
        loops = sch.get_loops(info.block_rv)
        if [loop_extent(sch, lp) for lp in loops[:len(row_extents)]] != row_extents or len(loops) != len(row_extents) + 1:
            return None
    rows = [lp for lp in out_loops[:-1] if loop_extent(sch, lp) != 1]
    if not rows:
        return None
    threads = worth_threads(sch, out_loops)
    fused = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    if threads:
        sch.parallel(fused)
    for info in reversed(infos[:-1]):
        sch.compute_at(info.block_rv, fused)
    for info in infos:
        if info.is_injective():
            vectorize_tail(sch, info.block_rv, lanes)
    return sch


class Rows(LoopRule):
    """Softmax-like chains on the same rows: one parallel row loop, exp once per element."""

    schedule = staticmethod(_rows)
