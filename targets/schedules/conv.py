"""Convolutions: one block reducing over channels and the kernel window."""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.schedule import ScheduleError

from edgeq.targets.schedules._loops import PARALLEL_MIN_WORK, LoopRule, block_axes, loop_extent, loops_work



def _conv(func, target, lanes):
    """Convolutions (one block reducing over several axes: channels and the kernel window):
    the output's innermost spatial axis (width) becomes vector lanes, the output-channel axis a
    register tile of up to 4, the reduction runs outside both; the padding stays a separate
    stage and the epilogue (bias, ReLU, requantize) follows each tile."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)  # no inlining: padding inlined into the window loads defeats vectors
    if not infos:
        return None
    mains = [n for n, info in enumerate(infos) if not info.is_injective()]
    if len(mains) != 1:
        return None
    prologue, main, epilogue = infos[:mains[0]], infos[mains[0]], infos[mains[0] + 1:]
    block = main.block_rv
    axes = block_axes(sch, block)
    if axes is None:
        return None
    _, pairs, kinds = axes
    n_s = len(kinds) - len(kinds.lstrip("S"))
    if n_s < 2 or kinds[n_s:] != "R" * (len(kinds) - n_s) or len(kinds) - n_s < 2:
        return None
    s_loops = [lp for _, lp in pairs[:n_s]]
    r_loops = [lp for _, lp in pairs[n_s:]]
    vec = s_loops[-1]
    ve = loop_extent(sch, vec)
    if not ve or ve > 16 * lanes:
        return None
    work = loops_work(sch, [lp for _, lp in pairs])  # unit loops add nothing to the product
    outer = s_loops[:-1]
    inner_reg = []
    if len(s_loops) >= 3:
        reg = s_loops[-3]
        re_ = loop_extent(sch, reg)
        ti = next((t for t in (4, 2) if re_ and re_ % t == 0), 1)
        if ti > 1:
            ro, ri = sch.split(reg, [None, ti])
            outer = [ro if lp.same_as(reg) else lp for lp in outer]
            inner_reg = [ri]
    sch.reorder(*outer, *r_loops, *inner_reg, vec)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    tile = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(tile, fused)
    kept = []
    for info in epilogue[:-1]:  # an elementwise chain collapses into its last block
        try:
            sch.compute_inline(info.block_rv)
        except ScheduleError:
            kept.append(info)
    for info in [*kept, *epilogue[-1:]]:
        sch.reverse_compute_at(info.block_rv, fused)
    for ax in inner_reg:
        sch.unroll(ax)
    sch.vectorize(vec)
    sch.decompose_reduction(block, r_loops[0])
    for info in prologue:
        pl = sch.get_loops(info.block_rv)
        total = loops_work(sch, pl)
        if pl and (total is None or total >= PARALLEL_MIN_WORK):
            sch.parallel(pl[0])
    return sch


class Conv(LoopRule):
    """Convolutions: one block reducing over channels and the kernel window."""

    schedule = staticmethod(_conv)
