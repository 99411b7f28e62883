"""Other reductions (RMSNorm, mean): rows in parallel, vector lanes."""

from __future__ import annotations

from tvm import s_tir, tirx

from edgeq.targets.schedules._loops import LoopRule, loop_extent, main_blocks, vectorize_tail, worth_threads



def _reduction(func, target, lanes):
    """Row-wise reductions and what follows them (softmax, RMSNorm): every block's leading
    spatial loops go to threads (each block separately: no recomputation), injective blocks get
    vector lanes on their innermost loop."""
    sch = s_tir.Schedule(func)
    infos = main_blocks(sch)
    if not infos or all(info.is_injective() for info in infos):
        return None
    for info in infos:
        block = info.block_rv
        stmt = sch.get(block)
        loops = sch.get_loops(block)
        if len(loops) != len(stmt.iter_vars):
            return None
        kinds = ["R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in stmt.iter_vars]
        lead = len(kinds) - len("".join(kinds).lstrip("S"))
        if info.is_injective():
            vectorize_tail(sch, block, lanes)
            lead = len(loops) - 1 if len(loops) > 1 else 0
        rows = [lp for lp in loops[:lead] if loop_extent(sch, lp) != 1]
        if rows and worth_threads(sch, loops):
            sch.parallel(sch.fuse(*rows) if len(rows) > 1 else rows[0])
    return sch


class Reduction(LoopRule):
    """Other reductions (RMSNorm, mean): rows in parallel, vector lanes."""

    schedule = staticmethod(_reduction)
