"""One reduction ``C[..., i, j] += A · B`` over k: register tiles with vector lanes."""

from __future__ import annotations

from tvm import s_tir

from edgeq.targets.schedules._loops import (
    PARALLEL_MIN_WORK, LoopRule, block_axes, index_is, loop_extent, loops_work, main_blocks, parallelize, vectorize_tail,
)


def _matmul(func, target, lanes):
    sch = s_tir.Schedule(func)
    infos = main_blocks(sch)
    if not infos or len(infos) > 2:
        return None
    main, epilogue = infos[0], (infos[1] if len(infos) == 2 else None)
    if main.is_injective() or (epilogue is not None and not epilogue.is_injective()):
        return None
    block = main.block_rv
    axes = block_axes(sch, block)
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
    if len(reads) != 2 or not stmt.writes[0].region or not index_is(stmt.writes[0].region[-1].min, j_var):
        return None
    j_contiguous = any(index_is(r.region[-1].min, j_var) for r in reads)
    k_contiguous = all(index_is(r.region[-1].min, k_var) for r in reads)
    is_float = "float" in str(out.dtype)
    if j_contiguous:
        return _matmul_outer_product(sch, block, epilogue, loops, lanes)
    if k_contiguous and is_float and len(iters) == 3:
        i_var = iters[0]
        a_index = next((n for n, r in enumerate(stmt.reads) if len(r.region) == 2 and index_is(r.region[0].min, i_var)), None)
        rows = loop_extent(sch, loops[0])
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
    ne = loop_extent(sch, j)
    ct = next((t for t in COL_TILES if ne and ne % t == 0), 1)
    wt = next((t for t in (4 * ct, 2 * ct, ct) if ne and ne % t == 0), ct)
    rt = ROW_TILE_VECTORS * lanes
    at = sch.cache_read(block, a_index, "global")  # each row tile's [K, rt] block contiguous
    sch.transform_layout(at, ("write", 0), lambda r, c: (r // rt, c, r % rt))
    work = loops_work(sch, loops)
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


def _matmul_outer_product(sch, block, epilogue, loops, lanes):
    *spatial, j, k = loops
    je = loop_extent(sch, j)
    ie = loop_extent(sch, spatial[-1]) if spatial else 1
    tj = next((f for f in ((2 * lanes, lanes) if ie != 1 else (4 * lanes, 2 * lanes, lanes)) if je and je % f == 0), None)
    if tj is None:
        return None
    ti = 4 if (ie and ie % 4 == 0) else (2 if (ie and ie % 2 == 0) else 1)
    work = loops_work(sch, loops)
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
    fused = parallelize(sch, outer, work)
    local = sch.cache_write(block, 0, "global")  # the ti × tj tile: under 1 KiB, a stack array LLVM keeps in registers
    sch.reverse_compute_at(local, fused)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue.block_rv, fused)
    for ax in inner:
        sch.unroll(ax)
    sch.vectorize(ji)
    sch.decompose_reduction(block, k)
    vectorize_tail(sch, local, lanes)
    if epilogue is not None:
        vectorize_tail(sch, epilogue.block_rv, lanes)
    return sch


def _matmul_dot(sch, block, epilogue, loops, lanes, is_float):
    *spatial, k = loops
    work = loops_work(sch, loops)
    if not is_float:  # integer dot products: k stays a plain innermost loop for LLVM (sdot / vpdpbusd)
        fused = parallelize(sch, spatial, work)
        if epilogue is not None and fused is not None:
            sch.reverse_compute_at(epilogue.block_rv, fused)
        return sch
    ke = loop_extent(sch, k)
    if not ke or ke % lanes:
        return None
    ko, kl = sch.split(k, [None, lanes])
    rf = sch.rfactor(kl, 0)  # rf[kl, ...] = partial sums per lane
    wb_loops = sch.get_loops(block)
    fused = parallelize(sch, wb_loops[:len(spatial)], work)
    sch.compute_at(rf, fused)
    rf_loops = sch.get_loops(rf)
    lane, *_, ko2 = rf_loops[1:] if len(rf_loops) > 2 else (rf_loops[-1], rf_loops[-1])
    sch.reorder(ko2, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(rf, ko2)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue.block_rv, fused)
    return sch


class Matmul(LoopRule):
    """One reduction ``C[..., i, j] += A · B`` over k: register tiles with vector lanes."""

    schedule = staticmethod(_matmul)
