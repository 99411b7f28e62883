"""Default CPU schedules for every PrimFunc a model compiles to: TVM 0.27 applies none on CPU
(one scalar thread per kernel), and dlight has no CPU matmul rule.

Rules, tried in order on each unscheduled PrimFunc; a rule that does not match, or whose
primitives refuse the function, leaves it to the next, and a function no rule takes compiles as
before (never an error):

- ``matmul``: one reduction ``C[..., i, j] += A · B`` over k. When some operand is contiguous in
  j (``X @ W`` with W ``[K, N]``): register tiles of ``ti × tj`` outputs, k outside the tile, the
  j lanes vectorized (outer products: one broadcast of A, ``tj / lanes`` vector FMAs per k).
  When every operand is contiguous in k (``Q · Kᵀ``): float sums split into vector lanes over k
  (rfactor); integer sums keep k innermost as a plain loop, which LLVM vectorizes into widening
  multiply-adds (``sdot`` where the target has dotprod, ``vpmaddwd``/VNNI on x86).
- ``rows``: softmax-like chains where every block works on the same rows (max, exp, sum,
  divide, then elementwise): one parallel loop over rows, each block computed inside it on one
  row, so exp is computed once per element into an L1-resident row and its loops get vector lanes.
- ``reduction``: other reductions (RMSNorm, mean): rows in parallel, vector lanes.
- ``elementwise``: injective functions: loops fused, vectorized and split over threads.

Rows go to threads only when the kernel has enough work (``PARALLEL_MIN_WORK``): on small shapes
waking the pool costs more than it saves. Written on loops only, so the same schedule gives AVX2
on x86-64 and NEON on arm64.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

PARALLEL_MIN_WORK = 1 << 16  # multiply-adds or elements below which a kernel stays on one thread
SCHEDULED = "tirx.is_scheduled"


def schedule_module(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Apply the rules to every unscheduled PrimFunc of ``mod`` (CPU targets only)."""
    if "cpu" not in target.keys or target.kind.name != "llvm":
        return mod
    lanes = vector_lanes(target)
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        for rule in (_matmul, _conv, _rows, _reduction, _elementwise):
            try:
                sch = rule(func, target, lanes)
            except Exception:  # a primitive refused this function: leave it to the next rule
                sch = None
            if sch is not None:
                mod[gv] = sch.mod["main"].with_attr(SCHEDULED, True)
                break
    return mod


def vector_lanes(target) -> int:
    """float32 lanes of the target's vector registers (8 for AVX2, 4 for NEON)."""
    from tvm.target.codegen import llvm_get_vector_width

    try:
        bits = llvm_get_vector_width(target)
    except Exception:
        bits = 128
    return max(4, min(bits, 256) // 32)  # AVX-512 masked on some VMs: 256-bit tiles are safe everywhere


def _is_scheduled(func) -> bool:
    return bool(func.attrs) and SCHEDULED in func.attrs and int(func.attrs[SCHEDULED]) == 1


def _extent(sch, loop):
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _work(sch, loops) -> int | None:
    total = 1
    for loop in loops:
        extent = _extent(sch, loop)
        if extent is None:
            return None
        total *= extent
    return total


def _parallel(sch, loops, work) -> None:
    """Fuse ``loops`` and spread them over threads when the kernel is big enough."""
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    return fused


def _main_blocks(sch):
    """(infos) after inlining the pure-spatial prologue/epilogue blocks that can be inlined."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline_contiguous_spatial

    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    return try_inline_contiguous_spatial(sch, infos)


def _index_is(expr, var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


def _matmul(func, target, lanes):
    sch = s_tir.Schedule(func)
    infos = _main_blocks(sch)
    if not infos or len(infos) > 2:
        return None
    main, epilogue = infos[0], (infos[1] if len(infos) == 2 else None)
    if main.is_injective() or (epilogue is not None and not epilogue.is_injective()):
        return None
    block = main.block_rv
    axes = _block_axes(sch, block)
    if axes is None:
        return None
    stmt, pairs, kinds = axes
    if len(kinds) < 2 or not kinds.endswith("R") or kinds.count("R") != 1:
        return None
    iters = [iv.var for iv, _ in pairs]
    loops = [lp for _, lp in pairs]
    j_var, k_var = iters[-2], iters[-1]
    out = stmt.writes[0].source
    reads = [r for r in stmt.reads if not r.source.same_as(out)]
    if len(reads) != 2 or not stmt.writes[0].region or not _index_is(stmt.writes[0].region[-1].min, j_var):
        return None
    j_contiguous = any(_index_is(r.region[-1].min, j_var) for r in reads)
    k_contiguous = all(_index_is(r.region[-1].min, k_var) for r in reads)
    is_float = "float" in str(out.dtype)
    if j_contiguous:
        return _matmul_outer_product(sch, block, epilogue, loops, lanes)
    if k_contiguous and is_float and len(iters) == 3:
        i_var = iters[0]
        a_index = next((n for n, r in enumerate(stmt.reads) if len(r.region) == 2 and _index_is(r.region[0].min, i_var)), None)
        rows = _extent(sch, loops[0])
        if a_index is not None and rows and rows >= 2 * ROW_TILE_VECTORS * lanes and rows % (2 * lanes) == 0:
            return _matmul_nt_gemm(sch, block, epilogue, loops, lanes, a_index)
    if k_contiguous:
        return _matmul_dot(sch, block, epilogue, loops, lanes, is_float)
    return None


ROW_TILE_VECTORS = 2  # rows of A per register tile, in vectors
COL_TILES = (6, 4)  # columns of B per register tile, best first: 6 × 2 vectors = 12 accumulators


def _matmul_nt_gemm(sch, block, epilogue, loops, lanes, a_index):
    """``C[i, j] = sum_k A[i, k] · B[j, k]`` with many rows: A is transposed once into row
    tiles ``[i // rt, k, i % rt]`` so that its rows form vectors, B's elements are broadcast,
    and ``6 (or 4) columns × 2 vectors`` accumulators stay in registers over k."""
    i, j, k = loops
    ne = _extent(sch, j)
    ct = next((t for t in COL_TILES if ne and ne % t == 0), 1)
    wt = next((t for t in (4 * ct, 2 * ct, ct) if ne and ne % t == 0), ct)
    rt = ROW_TILE_VECTORS * lanes
    at = sch.cache_read(block, a_index, "global")  # each row tile's [K, rt] block contiguous
    sch.transform_layout(at, ("write", 0), lambda r, c: (r // rt, c, r % rt))
    work = _work(sch, loops)
    jo, jm, jj = sch.split(j, [None, wt // ct, ct])
    io, iv = sch.split(i, [None, rt])
    sch.reorder(jo, io, jm, k, jj, iv)
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(jo)
    tile = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(tile, jm)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue.block_rv, jo)
    sch.unroll(jj)
    sch.vectorize(iv)
    sch.decompose_reduction(block, k)
    return sch


def _block_axes(sch, block):
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


def _matmul_outer_product(sch, block, epilogue, loops, lanes):
    *spatial, j, k = loops
    je = _extent(sch, j)
    ie = _extent(sch, spatial[-1]) if spatial else 1
    tj = next((f for f in ((2 * lanes, lanes) if ie != 1 else (4 * lanes, 2 * lanes, lanes)) if je and je % f == 0), None)
    if tj is None:
        return None
    ti = 4 if (ie and ie % 4 == 0) else (2 if (ie and ie % 2 == 0) else 1)
    work = _work(sch, loops)
    jo, ji = sch.split(j, [None, tj])
    if spatial and ti > 1:
        io, ii = sch.split(spatial[-1], [None, ti])
        outer = [*spatial[:-1], io, jo]
        sch.reorder(*outer, k, ii, ji)
        inner = [ii]
    else:
        outer = [*spatial, jo]
        sch.reorder(*outer, k, ji)
        inner = []
    fused = _parallel(sch, outer, work)
    local = sch.cache_write(block, 0, "global")  # the ti × tj tile: under 1 KiB, a stack array LLVM keeps in registers
    sch.reverse_compute_at(local, fused)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue.block_rv, fused)
    for ax in inner:
        sch.unroll(ax)
    sch.vectorize(ji)
    sch.decompose_reduction(block, k)
    _vectorize_tail(sch, local, lanes)
    if epilogue is not None:
        _vectorize_tail(sch, epilogue.block_rv, lanes)
    return sch


def _matmul_dot(sch, block, epilogue, loops, lanes, is_float):
    *spatial, k = loops
    work = _work(sch, loops)
    if not is_float:  # integer dot products: k stays a plain innermost loop for LLVM (sdot / vpdpbusd)
        fused = _parallel(sch, spatial, work)
        if epilogue is not None and fused is not None:
            sch.reverse_compute_at(epilogue.block_rv, fused)
        return sch
    ke = _extent(sch, k)
    if not ke or ke % lanes:
        return None
    ko, kl = sch.split(k, [None, lanes])
    rf = sch.rfactor(kl, 0)  # rf[kl, ...] = partial sums per lane
    wb_loops = sch.get_loops(block)
    fused = _parallel(sch, wb_loops[:len(spatial)], work)
    sch.compute_at(rf, fused)
    rf_loops = sch.get_loops(rf)
    lane, *_, ko2 = rf_loops[1:] if len(rf_loops) > 2 else (rf_loops[-1], rf_loops[-1])
    sch.reorder(ko2, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(rf, ko2)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue.block_rv, fused)
    return sch


def _vectorize_tail(sch, block, lanes) -> None:
    """Vectorize a block's innermost loop when its extent is a multiple of the lanes."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extent = _extent(sch, loops[-1])
    if extent and extent % lanes == 0 and extent <= 16 * lanes:
        sch.vectorize(loops[-1])


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
    axes = _block_axes(sch, block)
    if axes is None:
        return None
    _, pairs, kinds = axes
    n_s = len(kinds) - len(kinds.lstrip("S"))
    if n_s < 2 or kinds[n_s:] != "R" * (len(kinds) - n_s) or len(kinds) - n_s < 2:
        return None
    s_loops = [lp for _, lp in pairs[:n_s]]
    r_loops = [lp for _, lp in pairs[n_s:]]
    vec = s_loops[-1]
    ve = _extent(sch, vec)
    if not ve or ve > 16 * lanes:
        return None
    work = _work(sch, [lp for _, lp in pairs])  # unit loops add nothing to the product
    outer = s_loops[:-1]
    inner_reg = []
    if len(s_loops) >= 3:
        reg = s_loops[-3]
        re_ = _extent(sch, reg)
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
        except Exception:
            kept.append(info)
    for info in [*kept, *epilogue[-1:]]:
        sch.reverse_compute_at(info.block_rv, fused)
    for ax in inner_reg:
        sch.unroll(ax)
    sch.vectorize(vec)
    sch.decompose_reduction(block, r_loops[0])
    for info in prologue:
        pl = sch.get_loops(info.block_rv)
        total = _work(sch, pl)
        if pl and (total is None or total >= PARALLEL_MIN_WORK):
            sch.parallel(pl[0])
    return sch


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
    row_extents = [_extent(sch, lp) for lp in out_loops[:-1]]
    if not out_loops or None in row_extents:
        return None
    for info in infos:  # every block: the same leading row loops, then one loop over the row
        loops = sch.get_loops(info.block_rv)
        if [_extent(sch, lp) for lp in loops[:len(row_extents)]] != row_extents or len(loops) != len(row_extents) + 1:
            return None
    rows = [lp for lp in out_loops[:-1] if _extent(sch, lp) != 1]
    if not rows:
        return None
    work = _work(sch, out_loops)
    fused = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    for info in reversed(infos[:-1]):
        sch.compute_at(info.block_rv, fused)
    for info in infos:
        if info.is_injective():
            _vectorize_tail(sch, info.block_rv, lanes)
    return sch


def _reduction(func, target, lanes):
    """Row-wise reductions and what follows them (softmax, RMSNorm): every block's leading
    spatial loops go to threads (each block separately: no recomputation), injective blocks get
    vector lanes on their innermost loop."""
    sch = s_tir.Schedule(func)
    infos = _main_blocks(sch)
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
            _vectorize_tail(sch, block, lanes)
            lead = len(loops) - 1 if len(loops) > 1 else 0
        rows = [lp for lp in loops[:lead] if _extent(sch, lp) != 1]
        work = _work(sch, loops)
        if rows and (work is None or work >= PARALLEL_MIN_WORK):
            sch.parallel(sch.fuse(*rows) if len(rows) > 1 else rows[0])
    return sch


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
        if work is None:
            _elementwise_symbolic(sch, loops, lanes)
            continue
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if work is not None and work % lanes == 0 and work >= lanes:
            outer, inner = sch.split(fused, [None, lanes])
            sch.vectorize(inner)
        else:
            outer = fused
        if work is None or work >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
    return sch


def _elementwise_symbolic(sch, loops, lanes) -> None:
    """A symbolic extent (a KV cache's ``past + seq``): fusing every loop would put a division by
    it in each element's index. The innermost loops of static extent (the head dimension) are
    fused into vector lanes instead, and only the outer ones into the parallel loop."""
    static = 0
    while static < len(loops) and _extent(sch, loops[len(loops) - 1 - static]) is not None:
        static += 1
    outer, inner = loops[:len(loops) - static], loops[len(loops) - static:]
    if inner:
        inner_work = _work(sch, inner)
        fused_inner = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        if inner_work % lanes == 0:
            rest, vec = sch.split(fused_inner, [None, lanes])
            sch.vectorize(vec)
            outer = [*outer, rest]
        else:
            outer = [*outer, fused_inner]
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
