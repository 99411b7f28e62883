"""Injective functions: loops fused, vectorized and split over threads."""

from __future__ import annotations

from tvm import s_tir

from edgeq.targets.schedules._loops import LoopRule, loop_extent, loops_work, main_blocks, worth_threads



def _elementwise(func, target, lanes):
    sch = s_tir.Schedule(func)
    infos = main_blocks(sch)
    if not infos or not all(info.is_injective() for info in infos):
        return None
    for info in infos:
        loops = sch.get_loops(info.block_rv)
        if not loops:
            continue
        work = loops_work(sch, loops)
        threads = worth_threads(sch, loops)
        if work is None and not _is_hexagon(target):  # LLVM's Hexagon backend crashes (segfault) on it
            _elementwise_symbolic(sch, loops, lanes, threads)
            continue
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if work is not None and work % lanes == 0 and work >= lanes:
            outer, inner = sch.split(fused, [None, lanes])
            sch.vectorize(inner)
        else:
            outer = fused
        if threads:
            sch.parallel(outer)
    return sch


def _is_hexagon(target) -> bool:
    return str(target.attrs.get("mtriple", "")).startswith("hexagon")


def _elementwise_symbolic(sch, loops, lanes, threads: bool = True) -> None:
    """A symbolic extent (a KV cache's ``past + seq``): fusing every loop would put a division by
    it in each element's index. The innermost loops of static extent (the head dimension) are
    fused into vector lanes instead, and only the outer ones into the loop (parallel when
    ``threads``)."""
    static = 0
    while static < len(loops) and loop_extent(sch, loops[len(loops) - 1 - static]) is not None:
        static += 1
    outer, inner = loops[:len(loops) - static], loops[len(loops) - static:]
    if inner:
        inner_work = loops_work(sch, inner)
        fused_inner = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        if inner_work % lanes == 0:
            rest, vec = sch.split(fused_inner, [None, lanes])
            sch.vectorize(vec)
            outer = [*outer, rest]
        else:
            outer = [*outer, fused_inner]
    if outer and threads:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


class Elementwise(LoopRule):
    """Injective functions: loops fused, vectorized and split over threads."""

    schedule = staticmethod(_elementwise)
