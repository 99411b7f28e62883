"""Injective functions: loops fused, vectorized and split over threads."""

from __future__ import annotations

from tvm import s_tir

from edgeq.targets.schedules._loops import PARALLEL_MIN_WORK, LoopRule, _main_blocks, _work



def _elementwise(func, target, lanes):
    sch = s_tir.Schedule(func)
    infos = _main_blocks(sch)
    if not infos or not all(info.is_injective() for info in infos):
        return None
    for info in infos:
        loops = sch.get_loops(info.block_rv)
        if not loops:
            continue
        work = _work(sch, loops)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if work is not None and work % lanes == 0 and work >= lanes:
            outer, inner = sch.split(fused, [None, lanes])
            sch.vectorize(inner)
        else:
            outer = fused
        if work is None or work >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
    return sch


class Elementwise(LoopRule):
    """Injective functions: loops fused, vectorized and split over threads."""

    schedule = staticmethod(_elementwise)
