"""Loop helpers shared by edgeq's CPU schedule rules (``edgeq.targets.schedules``)."""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import ScheduleError

PARALLEL_MIN_WORK = 1 << 16  # multiply-adds or elements below which a kernel stays on one thread


def vector_lanes(target) -> int:
    """float32 lanes of the target's vector registers (8 for AVX2, 4 for NEON)."""
    from tvm.target.codegen import llvm_get_vector_width

    try:
        bits = llvm_get_vector_width(target)
    except Exception:
        bits = 128
    return max(4, min(bits, 256) // 32)  # AVX-512 masked on some VMs: 256-bit tiles are safe everywhere


def loop_extent(sch, loop):
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def loops_work(sch, loops) -> int | None:
    total = 1
    for loop in loops:
        extent = loop_extent(sch, loop)
        if extent is None:
            return None
        total *= extent
    return total


VAR_UPPER_BOUND = "edgeq.var_upper_bound"  # PrimFunc attr: symbolic dimension name -> its largest value


def worth_threads(sch, loops) -> bool:
    """Whether the work of ``loops`` may reach PARALLEL_MIN_WORK: a static extent is counted; a
    symbolic one (a KV cache's ``past``) at the largest value the function's ``VAR_UPPER_BOUND``
    gives it, else assumed large. A launch over the thread pool costs microseconds: a decode
    step's small kernels (a mask add or softmax over ``past + 1`` positions) run faster on one."""
    work = loops_work(sch, loops)
    if work is not None:
        return work >= PARALLEL_MIN_WORK
    attrs = sch.mod["main"].attrs
    bounds = attrs.get(VAR_UPPER_BOUND) if attrs is not None else None
    if not bounds:
        return True
    from tvm import sym

    analyzer = sym.Analyzer()
    total = 1
    for loop in loops:
        extent = sch.get(loop).extent
        for var in tirx.analysis.undefined_vars(extent):
            if var.name not in bounds:
                return True
            analyzer.update(var, sym.ConstIntBound(0, int(bounds[var.name])), override=True)
        total *= analyzer.const_int_bound(extent).max_value
    return total >= PARALLEL_MIN_WORK


def parallelize(sch, loops, work) -> None:
    """Fuse ``loops`` and spread them over threads when the kernel is big enough."""
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    return fused


def main_blocks(sch):
    """(infos) after inlining the pure-spatial prologue/epilogue blocks that can be inlined."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline_contiguous_spatial

    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    return try_inline_contiguous_spatial(sch, infos)


def index_is(expr, var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


def block_axes(sch, block):
    """(block statement, its (iter var, loop) pairs without unit dimensions (a batch of 1, M = 1:
    they take no part in tiling), their kinds as a string of "S"/"R"); None when the loops no
    longer match the iter vars one to one."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) != len(stmt.iter_vars):
        return None
    pairs = [(iv, lp) for iv, lp in zip(stmt.iter_vars, loops) if not _unit(iv)]
    return stmt, pairs, "".join("R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv, _ in pairs)


def _unit(iv) -> bool:
    extent = iv.dom.extent
    return isinstance(extent, tirx.IntImm) and int(extent) == 1


def vectorize_tail(sch, block, lanes) -> None:
    """Vectorize a block's innermost loop when its extent is a multiple of the lanes."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extent = loop_extent(sch, loops[-1])
    if extent and extent % lanes == 0 and extent <= 16 * lanes:
        sch.vectorize(loops[-1])


class LoopRule(ScheduleRule):
    """A rule written as ``schedule(func, target, lanes) -> Schedule | None`` on loops; a
    primitive that refuses the function (ScheduleError) means the rule does not fit it."""

    @staticmethod
    def schedule(func, target, lanes):
        raise NotImplementedError

    def apply(self, func, target, tunable):
        try:
            return self.schedule(func, target, vector_lanes(target))
        except ScheduleError:
            return None
