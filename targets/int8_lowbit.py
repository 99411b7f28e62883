"""Packed low-bit linears with int8 activations (``act_bits=8``): integer dot products.

The activations are quantized on the fly, per row and per weight group of K, symmetric to int8
(``d = max|x| / 127``, ``xq = round_half_even(x · 127 / max|x|)``); each group's dot product of
int8 activations and unsigned 2/4/8-bit weight values is summed exactly in int32 by the CPU's
byte dot-product instruction, and rescaled once per group:

    y[i, j] = sum_g s[j, g] · d[i, g] · (acc[i, j, g] - z[j, g] · sum_k xq[i, g·G + k])

as llama.cpp's Q4×Q8 and onnxruntime's MatMulNBits accuracy level 4 do. The instruction comes
from the target's features (``dot_isa``): x86 ``vpdpbusd`` (AVX-512 VNNI, AVX-VNNI) or
``vpmaddubsw`` + ``vpmaddwd`` (AVX-512BW, AVX2), arm64 ``sdot`` (+dotprod) and, for pairs of
rows, ``smmla`` (+i8mm). A target with none of them keeps the float-activation kernel, which
stays the exact reference.

The kernel is written in TVMScript (the instructions are LLVM intrinsics on whole vectors; no
schedule), with the float kernel's signature, so it replaces the packed-linear PrimFunc as is.
Each call is ONE parallel region (``pragma_parallel_launch_point``): TVM's thread pool splits every
parallel loop statically, so each region costs a fork/join and a wait for the slowest thread
(long when the machine is loaded and a worker is descheduled). Inside it the thread tasks quantize
the activations' (row, group) blocks between them, meet at a barrier, and share the int8 rows for
the dot products. Weight rows go to threads four at a time (four independent dot-product chains),
activation rows two at a time (each unpacked weight vector serves both); each group's int32 sums
are rescaled into float lanes as soon as they are complete, the zero-point terms summed over the
groups in vectors after the weights, and the weights are prefetched a few rows ahead: beyond L2
they stream from DRAM.

At one row (decode) the split is dynamic instead (``gemv_stealing``): TVM's pool hands each
thread a fixed share of a parallel loop, and a thread that starts late or is descheduled held the
whole call up (medians 2-10x the minima on a loaded host, where onnxruntime's pool hands blocks
out as threads come). The weight row blocks are split into up to ``STEAL_WORKERS`` chunks with a
counter each (claims of at least ``CLAIM_BYTES``); a thread takes the blocks of its own chunk,
then those left in the chunks after it. TVM's CPU back end has no atomics: the counters are
plain loads and stores, a race makes two threads compute the same block (the same values
written twice), and no block is ever skipped. Each thread quantizes the row itself, when it
first finds a block left, so there is no barrier.

At many rows (prefill) the lanes are output columns instead (``gemm_columns``): each thread
task unpacks 2 × 16 (AVX-512; 2 × 8 on AVX2; 4 × 4 on arm64) weight rows once into a tile of
4-byte words laid out column after column, and every dot-product instruction multiplies one such
word per column by four int8 activations of one row broadcast to all lanes (``vpdpbusd zmm, zmm,
dword{1to16}``; ``sdot v.4s, v.16b, v.4b[l]`` on arm64). The group's rescale is then one vector
of columns (convert, zero-point term, scale) per 4 to 16 dot products instead of a horizontal sum
per output. With i8mm (an even number of columns) the prefill tile is ``smmla``'s instead: each
thread task unpacks 4 column pairs once, 8 bytes of K per column side by side, and each
instruction multiplies one pair by the same 8 bytes of two activation rows into a 2 × 2 int32 tile
(an odd last row is paired with itself).
"""

from __future__ import annotations

import tvm

ACT_BITS = (8, 32)  # 32: float activations (the default)
# weight rows per thread task, best first: four independent dot-product chains and load streams
ROWS_PER_TASK = (4, 2, 1)
TILE_ROWS = 2  # activation rows per register tile (prefill): each unpacked weight vector serves them all
# weight bytes prefetched ahead of a task's block of rows (which it reads side by side): the same
# byte of the row that many bytes past the block (rounded up to whole rows). Streaming from DRAM
# (2 threads, 96 MB of copies): none 20 GB/s, ~5 KB 23-26 GB/s, 18-37 KB at K = 576 1-3 GB/s less
PREFETCH_BYTES = 3072
# prefill GEMM (see ``gemm_tile``): from this many activation rows on, each thread task
# unpacks its weight columns once into a column-major tile and the int32 lanes are output columns
GEMM_MIN_ROWS = 8
# vector bytes -> (column vectors, activation rows) per register tile: 2 × 4 int32 and 2 × 4 float32
# accumulators of 16 columns fill half of AVX-512's 32 registers; AVX2 has 16 of 8 columns; arm64's
# 32 NEON registers of 4 columns take 4 × 2 int32 and 4 × 2 float32 (16 columns per task)
GEMM_TILES = {64: (2, 4), 32: (2, 2), 16: (4, 2)}
MMLA_COLUMN_PAIRS = 4  # i8mm prefill GEMM: column pairs per register tile of 2 rows (4 × 2 × 2 int32)
CORRECTION_LANES = (16, 8, 4, 2)  # groups per vector in the zero-point terms, widest that fits (then one by one)
STEAL_WORKERS = 16  # one-row kernel: chunks of weight row blocks that idle threads take from each other
# weight bytes per claim at least: the counter and the barrier after it then cost little (4096² and
# the lm_head: medians 5-15% lower than claims of one block, same minima; 2 threads, load 4)
CLAIM_BYTES = 16384
CLAIM_STRIDE = 16  # int32 per chunk counter: one 64-byte cache line each
QUANT_LANES = 16  # float32 activations per vector when quantizing (every group is a multiple of 16)
ISA_ATTR = "edgeq.int8_dot"  # on each int8-activation kernel: the instruction family it uses


def count_int8_kernels(mod: tvm.IRModule) -> int:
    """The int8-activation kernels in a lowered module."""
    return sum(1 for _, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and ISA_ATTR in f.attrs)


def dot_isa(target) -> str | None:
    """The byte dot-product instruction family ``target`` has, best first; None if it has none."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs["mtriple"]) if "mtriple" in target.attrs else ""
    has = lambda feature: bool(codegen.target_has_features(feature, target))  # noqa: E731
    if triple.startswith("x86_64"):
        return next((isa for isa in ("avx512vnni", "avxvnni", "avx512bw", "avx2") if has(isa)), None)
    if triple.startswith("aarch64"):
        if has("i8mm") and has("dotprod"):
            return "i8mm"
        return "dotprod" if has("dotprod") else None
    return None


# per family: the vector widths in bytes it multiplies at once, widest first
_WIDTHS = {"avx512vnni": (64, 32, 16), "avxvnni": (32, 16), "avx512bw": (64, 32, 16), "avx2": (32, 16),
           "dotprod": (16,), "i8mm": (16,)}
_VPDPBUSD = {64: "llvm.x86.avx512.vpdpbusd.512", 32: "llvm.x86.avx512.vpdpbusd.256", 16: "llvm.x86.avx512.vpdpbusd.128"}
_PMADDUBSW = {64: "llvm.x86.avx512.pmaddubs.w.512", 32: "llvm.x86.avx2.pmadd.ub.sw", 16: "llvm.x86.ssse3.pmadd.ub.sw.128"}
_PMADDWD = {64: "llvm.x86.avx512.pmaddw.d.512", 32: "llvm.x86.avx2.pmadd.wd", 16: "llvm.x86.sse2.pmadd.wd"}


def vector_bytes(isa: str, bits: int, group: int) -> int:
    """Bytes per dot-product step for ``bits``-bit weights in groups of ``group``; 0 if none fits.

    ``vpmaddubsw`` adds pairs of u8·s8 products in int16, which 8-bit weights can overflow
    (2·255·127 > 32767): those keep the float kernel on AVX2 / AVX-512BW."""
    if bits not in (2, 4, 8) or (bits == 8 and isa in ("avx2", "avx512bw")):
        return 0
    nbytes = group * bits // 8
    return next((w for w in _WIDTHS[isa] if nbytes % w == 0), 0)


def gemm_columns(isa: str, bits: int, group: int) -> int:
    """Vector bytes of the column-lane GEMM (many rows) on ``isa``, 0 where it has none (groups
    of whole 4-byte words): x86 the widest register, arm64 ``sdot`` on 16 bytes (4 columns)."""
    if not vector_bytes(isa, bits, group):
        return 0
    return {"avx512vnni": 64, "avx512bw": 64, "avxvnni": 32, "avx2": 32}.get(isa, 16)


def signed_weights(isa: str, bits: int) -> bool:
    """``sdot`` multiplies signed bytes: 8-bit weights are stored shifted by 128 (byte ^ 0x80)."""
    return isa in ("dotprod", "i8mm") and bits == 8


def _dot(isa: str, width: int, acc, w, x):
    """``acc`` (int32 × width/4) plus, per int32 lane, the four products of its bytes of ``w``
    (unsigned, or signed where ``signed_weights``) and ``x`` (signed)."""
    from tvm import tirx

    lanes = width // 4
    i32 = f"int32x{lanes}"
    if isa in ("avx512vnni", "avxvnni"):
        return tirx.call_llvm_pure_intrin(i32, _VPDPBUSD[width], acc, w, x)
    if isa in ("avx512bw", "avx2"):
        pairs = tirx.call_llvm_pure_intrin(f"int16x{width // 2}", _PMADDUBSW[width], w, x)
        ones = tirx.Broadcast(tirx.const(1, "int16"), width // 2)
        return acc + tirx.call_llvm_pure_intrin(i32, _PMADDWD[width], pairs, ones)
    return tirx.call_llvm_pure_intrin(i32, "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, w, x)


def _weight_bytes(qweight, j, start, width: int, h, bits: int, signed: bool):
    """Values ``h`` of ``width`` packed bytes of weight row ``j`` from byte ``start``, as a byte
    vector (uint8, or int8 shifted by 128 where ``signed``)."""
    from tvm import tirx

    vec = qweight[j, tirx.Ramp(start, 1, width)]
    if bits < 8:
        shift = tirx.Broadcast(tirx.Cast("uint8", h * bits), width)
        vec = (vec >> shift) & tirx.Broadcast(tirx.const((1 << bits) - 1, "uint8"), width)
    if signed:
        vec = tirx.reinterpret(f"int8x{width}", vec ^ tirx.Broadcast(tirx.const(0x80, "uint8"), width))
    return vec


def int8_kernel(func: tvm.tirx.PrimFunc, bits: int, group: int, isa: str, width: int) -> tvm.tirx.PrimFunc:
    """The int8-activation kernel with ``func``'s parameters (x, qweight, scales, zeros[, bias], y)."""
    from tvm.script import tirx as T

    params = list(func.params)
    x_shape, w_shape, x_dtype = tuple(params[0].shape), tuple(params[1].shape), params[0].dtype
    s_shape, z_shape = tuple(params[2].shape), tuple(params[3].shape)
    s_dtype, z_dtype, y_shape = params[2].dtype, params[3].dtype, tuple(params[-1].shape)
    b_shape, b_dtype = (tuple(params[4].shape), params[4].dtype) if len(params) == 6 else (None, None)
    k_dim, n_dim = int(x_shape[1]), int(w_shape[0])
    groups, per_byte = k_dim // group, 8 // bits
    nbytes = group // per_byte
    steps, lanes = nbytes // width, width // 4
    rows = x_shape[0]  # symbolic (any number of tokens) or fixed
    signed = signed_weights(isa, bits)
    pairs = isa == "i8mm" and n_dim % 2 == 0
    rows_per_task = 2 if pairs else next(t for t in ROWS_PER_TASK if n_dim % t == 0)
    offset = 128.0 if signed else 0.0
    corr_lanes = next((c for c in CORRECTION_LANES if c <= groups), CORRECTION_LANES[-1])
    corr_vectors = groups // corr_lanes  # then the groups left over one by one
    f32v = f"float32x{lanes}"
    dot = lambda acc, w, x: _dot(isa, width, acc, w, x)  # noqa: E731
    wbytes = lambda qweight, j, start, h, count: _weight_bytes(qweight, j, start, count, h, bits, signed)  # noqa: E731

    prefetch_rows = rows_per_task + -(-PREFETCH_BYTES // (k_dim * bits // 8))

    @T.macro(hygienic=True)
    def prefetch(qweight, j, byte):
        """The same bytes of the weight row ``prefetch_rows`` further (read, keep in all caches)."""
        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(qweight[T.min(j + prefetch_rows, n_dim - 1), byte]),
                                      T.int32(0), T.int32(3), T.int32(1)))

    def rescale(scales, xd, sd, j, i, jj, g):
        """Group g's rescale s · d of weight row j and activation row i: the task's product in
        ``sd`` (row jj of its block) where it has one, else the product itself."""
        return sd[jj, g] if sd is not None else T.Cast("float32", scales[j, g]) * xd[i, g]

    @T.macro(hygienic=True)
    def row_block(qweight, scales, zeros, y, bias_of, xq, xd, xds, j0, i0, rt, sd):
        """Output rows i0 .. i0 + rt, weight rows j0 .. j0 + rows_per_task: one dot product per
        weight row, activation row and group, rescaled into float lanes at once; each weight
        vector is unpacked once for the rt rows. The zero-point terms, s · (z - offset) · d · Σxq
        per group, are summed after the weights, in vectors over the groups.

        With ``sd`` (one activation row; the task's buffer [rows_per_task, groups], else None) the
        rescale factors s · d of all groups are multiplied first, in vectors: each group's rescale
        is then one FMA that broadcasts its factor from memory, where the scalar product, its load
        and its broadcast were 3 of the ~11 instructions per group and weight row."""
        accf = T.alloc_buffer((rows_per_task, rt, lanes), "float32")
        acc = T.alloc_buffer((rows_per_task, rt, lanes), "int32")
        corr = T.alloc_buffer((rows_per_task, rt, corr_lanes), "float32")
        for jj, ii in T.grid(rows_per_task, rt):
            accf[jj, ii, T.ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
        if sd is not None:
            for jj in T.unroll(rows_per_task):
                for gv in range(corr_vectors):
                    sd[jj, T.ramp(gv * corr_lanes, 1, corr_lanes)] = (
                        T.Cast(f"float32x{corr_lanes}", scales[j0 + jj, T.ramp(gv * corr_lanes, 1, corr_lanes)])
                        * xd[i0, T.ramp(gv * corr_lanes, 1, corr_lanes)])
                for g in T.serial(corr_vectors * corr_lanes, groups):
                    sd[jj, g] = T.Cast("float32", scales[j0 + jj, g]) * xd[i0, g]
        for g in range(groups):
            for jj in T.unroll(rows_per_task):
                prefetch(qweight, j0 + jj, g * nbytes)
                for ii in T.unroll(rt):
                    acc[jj, ii, T.ramp(0, 1, lanes)] = T.Broadcast(T.int32(0), lanes)
                for s in T.unroll(steps):
                    for h in T.unroll(per_byte):
                        for ii in T.unroll(rt):
                            acc[jj, ii, T.ramp(0, 1, lanes)] = dot(
                                acc[jj, ii, T.ramp(0, 1, lanes)],
                                wbytes(qweight, j0 + jj, g * nbytes + s * width, h, width),
                                xq[i0 + ii, g, h, T.ramp(s * width, 1, width)])
                for ii in T.unroll(rt):
                    accf[jj, ii, T.ramp(0, 1, lanes)] = (accf[jj, ii, T.ramp(0, 1, lanes)]
                                                         + T.Cast(f32v, acc[jj, ii, T.ramp(0, 1, lanes)])
                                                         * T.Broadcast(rescale(scales, xd, sd, j0 + jj, i0 + ii, jj, g), lanes))
        for jj, ii in T.grid(rows_per_task, rt):
            corr[jj, ii, T.ramp(0, 1, corr_lanes)] = T.Broadcast(T.float32(0), corr_lanes)
            for gv in range(corr_vectors):
                corr[jj, ii, T.ramp(0, 1, corr_lanes)] = corr[jj, ii, T.ramp(0, 1, corr_lanes)] + (
                    T.Cast(f"float32x{corr_lanes}", scales[j0 + jj, T.ramp(gv * corr_lanes, 1, corr_lanes)])
                    * (T.Cast(f"float32x{corr_lanes}", zeros[j0 + jj, T.ramp(gv * corr_lanes, 1, corr_lanes)])
                       - T.Broadcast(T.float32(offset), corr_lanes))
                    * xds[i0 + ii, T.ramp(gv * corr_lanes, 1, corr_lanes)])
            for g in T.serial(corr_vectors * corr_lanes, groups):
                corr[jj, ii, 0] = corr[jj, ii, 0] + (T.Cast("float32", scales[j0 + jj, g])
                                                     * (T.Cast("float32", zeros[j0 + jj, g]) - T.float32(offset)) * xds[i0 + ii, g])
            total = T.alloc_buffer((1,), "float32")
            total[0] = bias_of(j0 + jj)
            for l in range(lanes):
                total[0] = total[0] + accf[jj, ii, l]
            for l in range(corr_lanes):
                total[0] = total[0] - corr[jj, ii, l]
            y[i0 + ii, j0 + jj] = total[0]

    @T.macro(hygienic=True)
    def pair_block(qweight, scales, zeros, y, bias_of, xq, xd, xsum, j0, i0):
        """Output rows i0, i0 + 1 × weight rows j0, j0 + 1 by ``smmla``: int32 lanes
        (j0, i0), (j0, i0 + 1), (j0 + 1, i0), (j0 + 1, i0 + 1), each summing 8 bytes per step."""
        accf = T.alloc_buffer((4,), "float32")
        corr = T.alloc_buffer((4,), "float32")
        acc = T.alloc_buffer((4,), "int32")
        for l in T.unroll(4):
            accf[l] = T.float32(0)
            corr[l] = T.float32(0)
        for g in range(groups):
            acc[T.ramp(0, 1, 4)] = T.Broadcast(T.int32(0), 4)
            for s in T.unroll(nbytes // 8):
                for h in T.unroll(per_byte):
                    acc[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                        "int32x4", "llvm.aarch64.neon.smmla.v4i32.v16i8", acc[T.ramp(0, 1, 4)],
                        T.reinterpret("int8x16", T.vectorcombine("uint8x16" if not signed else "int8x16", wbytes(qweight, j0, g * nbytes + s * 8, h, 8),
                                                                 wbytes(qweight, j0 + 1, g * nbytes + s * 8, h, 8))),
                        T.vectorcombine("int8x16", xq[i0, g, h, T.ramp(s * 8, 1, 8)], xq[i0 + 1, g, h, T.ramp(s * 8, 1, 8)]))
            for l in T.unroll(4):
                dg = T.Cast("float32", scales[j0 + l // 2, g]) * xd[i0 + l % 2, g]
                accf[l] = accf[l] + T.Cast("float32", acc[l]) * dg
                corr[l] = corr[l] + dg * (T.Cast("float32", zeros[j0 + l // 2, g]) - T.float32(offset)) * T.Cast("float32", xsum[i0 + l % 2, g])
        for l in T.unroll(4):
            y[i0 + l % 2, j0 + l // 2] = bias_of(j0 + l // 2) + (accf[l] - corr[l])

    gemm = gemm_columns(isa, bits, group)
    cols = gemm // 4
    col_tiles, tile_rows = GEMM_TILES.get(gemm, (1, 1))
    if gemm and n_dim % (cols * col_tiles):
        col_tiles = 1
    if gemm and n_dim % cols:
        gemm = 0
    # many rows: the column-lane GEMM (smmla on column pairs where i8mm has them); a symbolic
    # number of rows picks one at run time
    if not (gemm or pairs):
        gemm_rows = "never"
    elif isinstance(rows, (tvm.tirx.IntImm, int)):
        gemm_rows = "always" if int(rows) >= GEMM_MIN_ROWS else "never"
    else:
        gemm_rows = "runtime"

    stealing = isinstance(rows, (tvm.tirx.IntImm, int)) and int(rows) == 1
    barrier_is_hint = isa in ("dotprod", "i8mm")  # arm64 ``hint #0`` (a nop), x86 ``sfence``
    chunks, k_words = nbytes // 4, k_dim * bits // 32  # 4-byte words per group, per weight row
    word_mask = ((1 << bits) - 1) * 0x01010101
    # 8-bit weights for sdot: each byte shifted by 128, the zero points with them
    signed_word = (lambda word: word ^ T.uint32(0x80808080)) if signed else (lambda word: word)  # noqa: E731
    signed_zero = (lambda z: z - T.float32(offset)) if signed else (lambda z: z)  # noqa: E731
    i8v, u8v = f"int8x{gemm}", f"uint8x{gemm}"
    by_lane = isa in ("dotprod", "i8mm")  # arm64: sdot by element (every group has 4k words)

    def dot_by_lane(acc, wt, ct, kw, h, words):
        """``acc`` plus the dot products of weight words kw .. kw + 3 with the four activation
        words ``words`` (int32 × 4), each broadcast from its lane: ``sdot v.4s, v.16b, v.4b[l]``."""
        for lane in range(4):
            acc = _dot(isa, gemm, acc, T.reinterpret(u8v, wt[ct, kw + lane, h, T.ramp(0, 1, cols)]),
                       T.reinterpret(i8v, T.Shuffle([words], [lane] * cols)))
        return acc

    @T.macro(hygienic=True)
    def gemm_tile(wt, ws, wz, y, bias_vec, xq32, xd, xsum, j0, i0, rt):
        """Output rows i0 .. i0 + rt × columns j0 .. j0 + col_tiles·cols, int32 lane = column."""
        accf = T.alloc_buffer((col_tiles, rt, cols), "float32")
        acc = T.alloc_buffer((col_tiles, rt, cols), "int32")
        for ct in T.unroll(col_tiles):
            for ii in T.unroll(rt):
                accf[ct, ii, T.ramp(0, 1, cols)] = T.Broadcast(T.float32(0), cols)
        for g in range(groups):
            for ct in T.unroll(col_tiles):
                for ii in T.unroll(rt):
                    acc[ct, ii, T.ramp(0, 1, cols)] = T.Broadcast(T.int32(0), cols)
            if by_lane:  # one load of four activation words per row, then sdot on each lane
                for c4 in T.unroll(chunks // 4):
                    for h in T.unroll(per_byte):
                        for ct in T.unroll(col_tiles):
                            for ii in T.unroll(rt):
                                acc[ct, ii, T.ramp(0, 1, cols)] = dot_by_lane(
                                    acc[ct, ii, T.ramp(0, 1, cols)], wt, ct, g * chunks + c4 * 4, h,
                                    xq32[i0 + ii, g, h, T.ramp(c4 * 4, 1, 4)])
            else:
                for c in T.unroll(chunks):
                    for h in T.unroll(per_byte):
                        for ct in T.unroll(col_tiles):
                            for ii in T.unroll(rt):
                                acc[ct, ii, T.ramp(0, 1, cols)] = _dot(
                                    isa, gemm, acc[ct, ii, T.ramp(0, 1, cols)],
                                    T.reinterpret(u8v, wt[ct, g * chunks + c, h, T.ramp(0, 1, cols)]),
                                    T.reinterpret(i8v, T.Broadcast(xq32[i0 + ii, g, h, c], cols)))
            for ct in T.unroll(col_tiles):
                for ii in T.unroll(rt):
                    accf[ct, ii, T.ramp(0, 1, cols)] = accf[ct, ii, T.ramp(0, 1, cols)] + (
                        T.Cast(f"float32x{cols}", acc[ct, ii, T.ramp(0, 1, cols)])
                        - wz[ct, g, T.ramp(0, 1, cols)] * T.Broadcast(T.Cast("float32", xsum[i0 + ii, g]), cols)
                    ) * (ws[ct, g, T.ramp(0, 1, cols)] * T.Broadcast(xd[i0 + ii, g], cols))
        for ct in T.unroll(col_tiles):
            for ii in T.unroll(rt):
                y[i0 + ii, T.ramp(j0 + ct * cols, 1, cols)] = accf[ct, ii, T.ramp(0, 1, cols)] + bias_vec(j0 + ct * cols)

    col_pairs = MMLA_COLUMN_PAIRS if n_dim % (2 * MMLA_COLUMN_PAIRS) == 0 else 1
    mm_steps = nbytes // 8  # 8 bytes of K per column and row in each smmla

    @T.macro(hygienic=True)
    def mmla_tile(wt, ws, wz, y, bias_of, xq, xd, xsum, j0, i0, i1):
        """Output rows i0, i1 × columns j0 .. j0 + 2·col_pairs by ``smmla``: per column pair p
        the int32 lanes (j0 + 2p, i0), (j0 + 2p, i1), (j0 + 2p + 1, i0), (j0 + 2p + 1, i1), each
        group rescaled as one vector; i1 = i0 for an odd last row (its lanes written twice)."""
        accf = T.alloc_buffer((col_pairs, 4), "float32")
        acc = T.alloc_buffer((col_pairs, 4), "int32")
        xs4 = T.alloc_buffer((4,), "float32")
        xd4 = T.alloc_buffer((4,), "float32")
        for p in T.unroll(col_pairs):
            accf[p, T.ramp(0, 1, 4)] = T.Broadcast(T.float32(0), 4)
        for g in range(groups):
            for p in T.unroll(col_pairs):
                acc[p, T.ramp(0, 1, 4)] = T.Broadcast(T.int32(0), 4)
            for s in T.unroll(mm_steps):
                for h in T.unroll(per_byte):
                    for p in T.unroll(col_pairs):
                        acc[p, T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                            "int32x4", "llvm.aarch64.neon.smmla.v4i32.v16i8", acc[p, T.ramp(0, 1, 4)],
                            wt[p, g, s, h, T.ramp(0, 1, 16)],
                            T.vectorcombine("int8x16", xq[i0, g, h, T.ramp(s * 8, 1, 8)], xq[i1, g, h, T.ramp(s * 8, 1, 8)]))
            for l in T.unroll(4):
                xs4[l] = T.Cast("float32", xsum[i0 + (i1 - i0) * (l % 2), g])
                xd4[l] = xd[i0 + (i1 - i0) * (l % 2), g]
            for p in T.unroll(col_pairs):
                accf[p, T.ramp(0, 1, 4)] = accf[p, T.ramp(0, 1, 4)] + (
                    T.Cast("float32x4", acc[p, T.ramp(0, 1, 4)]) - wz[p, g, T.ramp(0, 1, 4)] * xs4[T.ramp(0, 1, 4)]
                ) * (ws[p, g, T.ramp(0, 1, 4)] * xd4[T.ramp(0, 1, 4)])
        for p in T.unroll(col_pairs):
            for l in T.unroll(4):
                y[i0 + (i1 - i0) * (l % 2), j0 + 2 * p + l // 2] = accf[p, l] + bias_of(j0 + 2 * p + l // 2)

    @T.macro(hygienic=True)
    def mmla_all(qweight, scales, zeros, y, bias_of, xq, xd, xsum):
        """Every row pair through ``mmla_tile``; per thread task the weight columns unpacked once,
        in pairs of 8 bytes of K per column (smmla's 2 × 8 operand)."""
        for jt in T.parallel(n_dim // (2 * col_pairs)):
            wt = T.alloc_buffer((col_pairs, groups, mm_steps, per_byte, 16), "int8")
            ws = T.alloc_buffer((col_pairs, groups, 4), "float32")
            wz = T.alloc_buffer((col_pairs, groups, 4), "float32")
            for p, g, s in T.grid(col_pairs, groups, mm_steps):
                for h in T.unroll(per_byte):
                    wt[p, g, s, h, T.ramp(0, 1, 16)] = T.reinterpret("int8x16", T.vectorcombine(
                        "uint8x16" if not signed else "int8x16",
                        wbytes(qweight, jt * 2 * col_pairs + 2 * p, g * nbytes + s * 8, h, 8),
                        wbytes(qweight, jt * 2 * col_pairs + 2 * p + 1, g * nbytes + s * 8, h, 8)))
            for p, g, l in T.grid(col_pairs, groups, 4):
                ws[p, g, l] = T.Cast("float32", scales[jt * 2 * col_pairs + 2 * p + l // 2, g])
                wz[p, g, l] = signed_zero(T.Cast("float32", zeros[jt * 2 * col_pairs + 2 * p + l // 2, g]))
            for ip in range(rows // 2):
                mmla_tile(wt, ws, wz, y, bias_of, xq, xd, xsum, jt * 2 * col_pairs, ip * 2, ip * 2 + 1)
            for i in T.serial(rows // 2 * 2, rows):
                mmla_tile(wt, ws, wz, y, bias_of, xq, xd, xsum, jt * 2 * col_pairs, i, i)

    @T.macro(hygienic=True)
    def quantize_group(x, xq, xd, xsum, xds, i, g):
        """Group g of row i of x to int8: d = max|x| / 127, xq = round(x · 127 / max|x|),
        de-interleaved (xq[i, g, h, b] = x[i, g·G + b·per_byte + h]) to match the packed bytes;
        Σxq and d · Σxq for the zero-point terms. In vectors of QUANT_LANES floats."""
        amax = T.alloc_buffer((QUANT_LANES,), "float32")
        total = T.alloc_buffer((QUANT_LANES,), "int32")
        row = T.alloc_buffer((group,), "int8")
        amax[T.ramp(0, 1, QUANT_LANES)] = T.Broadcast(T.float32(0), QUANT_LANES)
        for v in range(group // QUANT_LANES):
            amax[T.ramp(0, 1, QUANT_LANES)] = T.max(amax[T.ramp(0, 1, QUANT_LANES)], T.abs(
                T.Cast(f"float32x{QUANT_LANES}", x[i, T.ramp(g * group + v * QUANT_LANES, 1, QUANT_LANES)])))
        for l in range(1, QUANT_LANES):
            amax[0] = T.max(amax[0], amax[l])
        xd[i, g] = amax[0] / T.float32(127)
        inv = T.alloc_buffer((1,), "float32")  # a buffer: a scalar assigned here became a workspace allocation per call
        inv[0] = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
        total[T.ramp(0, 1, QUANT_LANES)] = T.Broadcast(T.int32(0), QUANT_LANES)
        for v in range(group // QUANT_LANES):
            row[T.ramp(v * QUANT_LANES, 1, QUANT_LANES)] = T.Cast(f"int8x{QUANT_LANES}", T.max(T.min(
                T.round(T.Cast(f"float32x{QUANT_LANES}", x[i, T.ramp(g * group + v * QUANT_LANES, 1, QUANT_LANES)])
                        * T.Broadcast(inv[0], QUANT_LANES)),
                T.Broadcast(T.float32(127), QUANT_LANES)), T.Broadcast(T.float32(-127), QUANT_LANES)))
            total[T.ramp(0, 1, QUANT_LANES)] = total[T.ramp(0, 1, QUANT_LANES)] + T.Cast(
                f"int32x{QUANT_LANES}", row[T.ramp(v * QUANT_LANES, 1, QUANT_LANES)])
        for l in range(1, QUANT_LANES):
            total[0] = total[0] + total[l]
        xsum[i, g] = total[0]
        xds[i, g] = xd[i, g] * T.Cast("float32", total[0])
        for h in T.unroll(per_byte):
            for v in range(nbytes // QUANT_LANES):
                xq[i, g, h, T.ramp(v * QUANT_LANES, 1, QUANT_LANES)] = T.Shuffle(
                    [row[T.ramp(v * QUANT_LANES * per_byte, 1, QUANT_LANES * per_byte)]],
                    [h + per_byte * t for t in range(QUANT_LANES)])

    @T.macro(hygienic=True)
    def gemv_all(qweight, scales, zeros, y, bias_of, xq, xd, xsum, xds):
        """Weight rows to threads, each row's bytes the lanes (decode; arm64 at any rows)."""
        for jo in T.parallel(n_dim // rows_per_task):
            if pairs:  # i8mm: pairs of rows through smmla, an odd last row through sdot
                for ip in range(rows // 2):
                    pair_block(qweight, scales, zeros, y, bias_of, xq, xd, xsum, jo * 2, ip * 2)
                for i in T.serial(rows // 2 * 2, rows):
                    row_block(qweight, scales, zeros, y, bias_of, xq, xd, xds, jo * rows_per_task, i, 1, None)
            else:  # tiles of TILE_ROWS activation rows, then the rest one by one
                for it in range(rows // TILE_ROWS):
                    row_block(qweight, scales, zeros, y, bias_of, xq, xd, xds, jo * rows_per_task, it * TILE_ROWS, TILE_ROWS, None)
                for i in T.serial(rows // TILE_ROWS * TILE_ROWS, rows):
                    row_block(qweight, scales, zeros, y, bias_of, xq, xd, xds, jo * rows_per_task, i, 1, None)

    blocks = n_dim // rows_per_task
    # blocks per claim: at least CLAIM_BYTES of weights, so that the counter and the barrier after
    # it cost little (a divisor of the blocks, so that every claim is whole)
    per_claim = max(d for d in range(1, blocks + 1) if blocks % d == 0
                    and (d == 1 or (d - 1) * rows_per_task * k_dim * bits // 8 < CLAIM_BYTES))
    claims_total = blocks // per_claim
    workers = min(STEAL_WORKERS, claims_total)
    chunk = (claims_total + workers - 1) // workers
    # an odd number of claims per chunk (from 4 on; the last chunks then hold fewer or none): the
    # threads start chunks apart (thread 1 of 2 at chunk workers / 2), and at a power-of-two
    # distance (4 MB at 4096²) their weight streams from DRAM collide: 2x slower at 4096² in one
    # contiguous buffer, as an artifact's constants are (not at 4000 or 4160 rows)
    if chunk >= 4 and chunk % 2 == 0:
        chunk += 1

    @T.macro(hygienic=True)
    def take_blocks(qweight, scales, zeros, y, bias_of, xq, xd, xds, sd, claims, c):
        """The blocks left in chunk c, in order. Its counter is a plain load and store (TVM's CPU
        back end has no atomics): a race makes two threads compute the same block, which both
        write with the same values; no block is skipped, as a counter only ever moves past a
        block its writer computes."""
        # the counter is read once per claim and the block tested is the block taken: read twice,
        # another thread's claim in between could hand the last chunk a block past the end
        b = T.alloc_buffer((1,), "int32")
        b[0] = claims[c * CLAIM_STRIDE]
        while b[0] < T.min((c + 1) * chunk, claims_total):
            claims[c * CLAIM_STRIDE] = b[0] + 1
            for bb in range(per_claim):
                row_block(qweight, scales, zeros, y, bias_of, xq, xd, xds, (b[0] * per_claim + bb) * rows_per_task, 0, 1, sd)
            # an instruction the compiler may not move memory accesses across: the counter is
            # read again from memory next time (else it may live in a register for the loop)
            if barrier_is_hint:
                T.evaluate(T.call_llvm_intrin("void", "llvm.aarch64.hint", T.int32(0)))
            else:
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sse.sfence"))
            b[0] = claims[c * CLAIM_STRIDE]

    @T.macro(hygienic=True)
    def gemv_stealing(x, qweight, scales, zeros, y, bias_of):
        """One row (decode): TVM's pool gives each thread a fixed share of a parallel loop, so a
        late or descheduled thread holds the call up. Here the weight row blocks are split into
        ``workers`` chunks with a counter each; each task quantizes the row itself when it first finds
        a block left (no barrier), takes the blocks of its own chunk, then those left in the chunks
        after it. One parallel loop: a region of its own."""
        claims = T.alloc_buffer((workers * CLAIM_STRIDE,), "int32")
        for c in range(workers):
            claims[c * CLAIM_STRIDE] = c * chunk
        for v in T.parallel(workers):
            # the task's own int8 row (buffers inside a parallel loop are the task's)
            xq = T.alloc_buffer((1, groups, per_byte, nbytes), "int8")
            xd = T.alloc_buffer((1, groups), "float32")
            xsum = T.alloc_buffer((1, groups), "int32")
            xds = T.alloc_buffer((1, groups), "float32")
            sd = T.alloc_buffer((rows_per_task, groups), "float32")  # see row_block
            ready = T.alloc_buffer((1,), "int32")
            ready[0] = 0
            for o in range(workers):
                if claims[(v + o) % workers * CLAIM_STRIDE] < T.min(((v + o) % workers + 1) * chunk, claims_total):
                    if ready[0] == 0:  # the first chunk with blocks left: quantize the row for this task
                        for g in range(groups):
                            quantize_group(x, xq, xd, xsum, xds, 0, g)
                        ready[0] = 1
                take_blocks(qweight, scales, zeros, y, bias_of, xq, xd, xds, sd, claims, (v + o) % workers)

    @T.macro(hygienic=True)
    def gemm_all(qweight, scales, zeros, y, bias_vec, xq, xd, xsum):
        """Every row through ``gemm_tile``; per thread task the weight columns unpacked once."""
        qw32 = T.decl_buffer((n_dim, k_words), "uint32", data=qweight.data)
        xq32 = T.decl_buffer((rows, groups, per_byte, chunks), "int32", data=xq.data)
        for jt in T.parallel(n_dim // (cols * col_tiles)):
            wt = T.alloc_buffer((col_tiles, k_words, per_byte, cols), "uint32")
            ws = T.alloc_buffer((col_tiles, groups, cols), "float32")
            wz = T.alloc_buffer((col_tiles, groups, cols), "float32")
            for ct, kw, col in T.grid(col_tiles, k_words, cols):
                for h in T.unroll(per_byte):
                    wt[ct, kw, h, col] = signed_word(
                        (qw32[jt * cols * col_tiles + ct * cols + col, kw] >> T.uint32(h * bits)) & T.uint32(word_mask))
            for ct, g, col in T.grid(col_tiles, groups, cols):
                ws[ct, g, col] = T.Cast("float32", scales[jt * cols * col_tiles + ct * cols + col, g])
                wz[ct, g, col] = signed_zero(T.Cast("float32", zeros[jt * cols * col_tiles + ct * cols + col, g]))
            for it in range(rows // tile_rows):
                gemm_tile(wt, ws, wz, y, bias_vec, xq32, xd, xsum, jt * cols * col_tiles, it * tile_rows, tile_rows)
            for i in T.serial(rows // tile_rows * tile_rows, rows):
                gemm_tile(wt, ws, wz, y, bias_vec, xq32, xd, xsum, jt * cols * col_tiles, i, 1)

    @T.macro(hygienic=True)
    def many_rows(qweight, scales, zeros, y, bias_of, bias_vec, xq, xd, xsum):
        """Prefill: smmla on column pairs (i8mm), else the column-lane GEMM."""
        if pairs:
            mmla_all(qweight, scales, zeros, y, bias_of, xq, xd, xsum)
        else:
            gemm_all(qweight, scales, zeros, y, bias_vec, xq, xd, xsum)

    @T.macro(hygienic=True)
    def shared_rows(x, qweight, scales, zeros, y, bias_of, bias_vec):
        """One parallel region per call (each is a fork/join and a wait for the slowest thread):
        the thread tasks quantize the activations' groups between them, meet at a barrier, then
        share the int8 rows for the dot products."""
        xq = T.alloc_buffer((rows, groups, per_byte, nbytes), "int8")
        xd = T.alloc_buffer((rows, groups), "float32")
        xsum = T.alloc_buffer((rows, groups), "int32")
        xds = T.alloc_buffer((rows, groups), "float32")
        with T.attr(0, "pragma_parallel_launch_point", 1):
            with T.attr(0, "pragma_parallel_barrier_when_finish", 1):
                for ig in T.parallel(rows * groups):
                    quantize_group(x, xq, xd, xsum, xds, ig // groups, ig % groups)
            if gemm_rows == "never":
                gemv_all(qweight, scales, zeros, y, bias_of, xq, xd, xsum, xds)
            elif gemm_rows == "always":
                many_rows(qweight, scales, zeros, y, bias_of, bias_vec, xq, xd, xsum)
            elif rows >= GEMM_MIN_ROWS:
                many_rows(qweight, scales, zeros, y, bias_of, bias_vec, xq, xd, xsum)
            else:
                gemv_all(qweight, scales, zeros, y, bias_of, xq, xd, xsum, xds)

    @T.macro(hygienic=True)
    def body(x, qweight, scales, zeros, y, bias_of, bias_vec):
        if stealing:
            gemv_stealing(x, qweight, scales, zeros, y, bias_of)
        else:
            shared_rows(x, qweight, scales, zeros, y, bias_of, bias_vec)

    if b_shape is None:
        @T.prim_func(private=True)
        def kernel(x: T.Buffer(x_shape, x_dtype), qweight: T.Buffer(w_shape, "uint8"), scales: T.Buffer(s_shape, s_dtype),
                   zeros: T.Buffer(z_shape, z_dtype), y: T.Buffer(y_shape, "float32")):
            body(x, qweight, scales, zeros, y, lambda j: T.float32(0), lambda j: T.Broadcast(T.float32(0), cols))
    else:
        @T.prim_func(private=True)
        def kernel(x: T.Buffer(x_shape, x_dtype), qweight: T.Buffer(w_shape, "uint8"), scales: T.Buffer(s_shape, s_dtype),
                   zeros: T.Buffer(z_shape, z_dtype), bias: T.Buffer(b_shape, b_dtype), y: T.Buffer(y_shape, "float32")):
            body(x, qweight, scales, zeros, y, lambda j: T.Cast("float32", bias[j]),
                 lambda j: T.Cast(f"float32x{cols}", bias[T.ramp(j, 1, cols)]))
    out = kernel.with_attr("tirx.is_scheduled", True).with_attr("tirx.noalias", True).with_attr(ISA_ATTR, isa)
    if func.attrs and "global_symbol" in func.attrs:
        out = out.with_attr("global_symbol", func.attrs["global_symbol"])
    return out
