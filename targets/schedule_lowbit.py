"""CPU kernels for the packed low-bit linear (``lower_lowbit``): the default pipeline applies no
schedule, leaving one scalar thread. The schedule rule ``edgeq.targets.schedules.packed_linear``
recognizes the kernel and picks one of these.

Each packed-linear PrimFunc is rebuilt with the same signature from a compute whose reduction is
laid out for vector lanes, then scheduled:

    part[i, j, g, h, l] = sum_bo x[i, g, h, bo·L + l] · nibble_h(q[j, g, bo·L + l])   (L byte lanes)
    y[i, j]           = sum_{g, h, l} s[j, g] · (part[i, j, g, h, l] - z[j, g] · xs[i, g, h, l])

``xs`` (sums of x per lane) does not depend on the output row, so the zero point costs one vector
multiply-add per group and the scale one more: the inner loop only loads bytes, masks/shifts
them, converts to float and multiplies-adds. Lanes stay vectors across the whole row (one
horizontal sum per output), rows go to threads. Written on loops only, so LLVM emits AVX2 on
x86-64 and NEON on arm64 from the same schedule. 3-bit weights (values straddle bytes) and
groups narrower than the lanes keep the original compute with a simpler schedule.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te

BLOCK = "packed_linear"
PARALLEL_MIN_MACS = 1 << 16  # below this (~5 µs on one core) waking threads costs more than it saves
LANES = 16  # packed bytes per vector step: 16 bytes = 32 four-bit values = 4 AVX2 / 8 NEON float vectors
GEMM_MIN_ROWS = 16  # from here on (prefill) the weight is dequantized once per tile, not once per row
GEMM_ROW_TILE = 16  # rows of X per register tile: two 8-float vectors (AVX2) / four NEON vectors
# (output columns per register tile, weight rows dequantized together per thread task), best
# first: 6 columns × 16 rows = 12 vector accumulators keep both FMA pipes busy through their
# latency (4 columns, 8 accumulators, measured 10-40% slower on SmolLM2's shapes)
GEMM_TILES = ((6, 24), (4, 16), (4, 8), (4, 4), (1, 1))


def packed_value(qweight, j, g, h, b, bits: int, nbytes: int):
    """Value ``h`` of packed byte ``b`` in group ``g`` of weight row ``j``, as float32 (a TIR
    expression): the shift and mask stay in uint8, which LLVM vectorizes as byte operations."""
    byte = qweight[j, g * nbytes + b]
    if bits == 8:
        return byte.astype("float32")
    return ((byte >> (h * bits).astype("uint8")) & tvm.tirx.const((1 << bits) - 1, "uint8")).astype("float32")


def gemm_compute(x, qweight, scales, zeros, bias, *, bits: int, group: int):
    """TE compute of the packed linear for many rows: the weight is dequantized into float32
    tiles and multiplied as ``y[i, j] = sum_k xt[i // 16, k, i % 16] · w[j, k]``, with k in the
    packed (de-interleaved) order on both sides so that unpacking reads contiguous bytes. X
    packed per 16-row tile keeps the tile sequential in memory: with K = 1536 (SmolLM2's
    down_proj) a strided [K, rows] X ran 30% slower, its rows streamed from L2 at a 512-byte stride."""
    m, k_dim = x.shape
    n_dim = qweight.shape[0]
    groups = k_dim // group
    per_byte = 8 // bits
    nbytes = group // per_byte
    rt = GEMM_ROW_TILE  # X is packed per row tile: each tile's [K, rt] block is one contiguous stream
    xt = te.compute((m // rt, groups, per_byte, nbytes, rt),
                    lambda io, g, h, b, iv: x[io * rt + iv, g * group + b * per_byte + h].astype("float32"),
                    name="packed_gemm_x")

    def dequantized(j, g, h, b):
        value = packed_value(qweight, j, g, h, b, bits, nbytes)
        return (value - zeros[j, g].astype("float32")) * scales[j, g].astype("float32")

    w = te.compute((n_dim, groups, per_byte, nbytes), dequantized, name="packed_gemm_w")
    rg = te.reduce_axis((0, groups), name="g")
    rh = te.reduce_axis((0, per_byte), name="h")
    rb = te.reduce_axis((0, nbytes), name="b")
    y = te.compute((m, n_dim),
                   lambda i, j: te.sum(xt[i // rt, rg, rh, rb, i % rt] * w[j, rg, rh, rb], axis=[rg, rh, rb]),
                   name="packed_linear_out", attrs={"edgeq_bits": bits, "edgeq_group": group})
    if bias is None:
        return y
    return te.compute((m, n_dim), lambda i, j: y[i, j] + bias[j].astype("float32"), name="packed_linear_bias")


def gemm_kernel(func: tvm.tirx.PrimFunc, bits: int, group: int) -> tvm.tirx.PrimFunc:
    """A scheduled packed GEMM PrimFunc with ``func``'s parameters (many rows of X)."""
    buffers = list(func.params)
    names = ["x", "qweight", "scales", "zeros", "bias"][: len(buffers) - 1]
    inputs = [te.placeholder(b.shape, b.dtype, name) for b, name in zip(buffers[:-1], names)]
    bias = inputs[4] if len(inputs) > 4 else None
    y = gemm_compute(*inputs[:4], bias, bits=bits, group=group)
    sch = s_tir.Schedule(te.create_prim_func([*inputs, y]))
    _schedule_gemm(sch, int(buffers[1].shape[0]))
    out = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return out.with_attr("global_symbol", func.attrs["global_symbol"]) if func.attrs and "global_symbol" in func.attrs else out


def _schedule_gemm(sch, n_dim: int) -> None:
    out = sch.get_sblock("packed_linear_out")
    w = sch.get_sblock("packed_gemm_w")
    try:
        bias = sch.get_sblock("packed_linear_bias")
    except Exception:
        bias = None
    i, j, g, h, b = sch.get_loops(out)
    ct, wt = next((c, w) for c, w in GEMM_TILES if n_dim % w == 0)
    jo, jm, jj = sch.split(j, [None, wt // ct, ct])
    io, iv = sch.split(i, [None, GEMM_ROW_TILE])
    sch.reorder(jo, io, jm, g, h, b, jj, iv)
    sch.parallel(jo)
    tile = sch.cache_write(out, 0, "global")  # ct × 16 accumulators on the stack: registers after unrolling
    sch.reverse_compute_at(tile, jm)
    if bias is not None:
        sch.reverse_compute_at(bias, jo)
    sch.compute_at(w, jo)  # dequantize the tile's weight rows once, for all rows of X
    wb = sch.get_loops(w)[-1]
    sch.vectorize(wb)
    sch.unroll(jj)
    sch.vectorize(iv)
    sch.decompose_reduction(out, g)


def lane_count(bits: int, group: int) -> int:
    """Byte lanes for the lane kernel, 0 where it does not apply (3 bits; a group too narrow)."""
    if bits not in (2, 4, 8):
        return 0
    nbytes = group * bits // 8
    return LANES if nbytes % LANES == 0 else 0


def lane_compute(x, qweight, scales, zeros, bias, *, bits: int, group: int, lanes: int):
    """TE compute of the packed linear with per-lane partial sums (see the module docstring)."""
    m, k_dim = x.shape
    n_dim = qweight.shape[0]
    groups = k_dim // group
    per_byte = 8 // bits
    nbytes = group // per_byte
    steps = nbytes // lanes
    # de-interleave x once: xd[i, g, h, b] = x[i, g·G + b·per_byte + h], contiguous in b
    xd = te.compute((m, groups, per_byte, nbytes),
                    lambda i, g, h, b: x[i, g * group + b * per_byte + h].astype("float32"), name="packed_linear_x")
    bo = te.reduce_axis((0, steps), name="bo")
    xs = te.compute((m, groups, per_byte, lanes), lambda i, g, h, l: te.sum(xd[i, g, h, bo * lanes + l], axis=bo),
                    name="packed_linear_xsum")

    bp = te.reduce_axis((0, steps), name="bp")
    part = te.compute((m, n_dim, groups, per_byte, lanes),
                      lambda i, j, g, h, l: te.sum(
                          xd[i, g, h, bp * lanes + l] * packed_value(qweight, j, g, h, bp * lanes + l, bits, nbytes),
                          axis=bp),
                      name=BLOCK, attrs={"edgeq_bits": bits, "edgeq_group": group})
    rg = te.reduce_axis((0, groups), name="g")
    rh = te.reduce_axis((0, per_byte), name="h")
    rl = te.reduce_axis((0, lanes), name="l")
    y = te.compute((m, n_dim), lambda i, j: te.sum(
        scales[j, rg].astype("float32") * (part[i, j, rg, rh, rl] - zeros[j, rg].astype("float32") * xs[i, rg, rh, rl]),
        axis=[rg, rh, rl]), name="packed_linear_out")
    if bias is None:
        return y
    return te.compute((m, n_dim), lambda i, j: y[i, j] + bias[j].astype("float32"), name="packed_linear_bias")


def lane_kernel(func: tvm.tirx.PrimFunc, bits: int, group: int, lanes: int) -> tvm.tirx.PrimFunc:
    """A scheduled lane-kernel PrimFunc with ``func``'s parameters (x, qweight, scales, zeros[,
    bias], y)."""
    buffers = list(func.params)
    names = ["x", "qweight", "scales", "zeros", "bias"][: len(buffers) - 1]
    inputs = [te.placeholder(b.shape, b.dtype, name) for b, name in zip(buffers[:-1], names)]
    bias = inputs[4] if len(inputs) > 4 else None
    y = lane_compute(*inputs[:4], bias, bits=bits, group=group, lanes=lanes)
    new = te.create_prim_func([*inputs, y])
    sch = s_tir.Schedule(new)
    _schedule_lanes(sch, 8 // bits, group * bits // 8 // lanes, _worth_threads(buffers[0].shape, buffers[1].shape[0]))
    out = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return out.with_attr("global_symbol", func.attrs["global_symbol"]) if func.attrs and "global_symbol" in func.attrs else out


def _schedule_lanes(sch, per_byte: int, steps: int, parallel: bool = True) -> None:
    part = sch.get_sblock(BLOCK)
    out = sch.get_sblock("packed_linear_out")
    try:
        sch.reverse_compute_inline(sch.get_sblock("packed_linear_bias"))
    except Exception:  # no bias
        pass
    i, j, g, h, l = sch.get_loops(out)
    rf = sch.rfactor(l, 0)  # rf[l, i, j] = sum over g, h: one vector of lanes per output row
    i, j, g, h, l = sch.get_loops(rf)
    ij = sch.fuse(i, j)
    if parallel:
        sch.parallel(ij)
    sch.reverse_compute_at(out, ij)
    sch.compute_at(part, g)
    # compute_at drops unit loops: part's loops under g are (h, l, bp) without those of extent 1
    inner = sch.get_loops(part)[2:]
    ph = inner.pop(0) if per_byte > 1 else None
    pl = inner.pop(0)
    pb = inner.pop(0) if steps > 1 else None
    if pb is not None:
        sch.reorder(pb, *[lp for lp in (ph, pl) if lp is not None])
    # buffers stay "global": under 1 KiB, TVM lowers those (and only those) to stack allocas on
    # CPU; "local" would become a workspace allocation per row
    sch.vectorize(pl)  # the init blocks that decompose_reduction splits off keep these
    if ph is not None:
        sch.unroll(ph)
    sch.vectorize(l)
    sch.unroll(h)
    if pb is not None:
        sch.decompose_reduction(part, pb)
    sch.decompose_reduction(rf, g)


def _worth_threads(x_shape, n_dim) -> bool:
    """Whether the kernel does enough multiply-adds to split across threads (a symbolic batch: yes)."""
    dims = [*x_shape, n_dim]
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return True
    macs = 1
    for d in dims:
        macs *= int(d)
    return macs >= PARALLEL_MIN_MACS


def schedule_rfactor(sch, block) -> bool:
    """The original compute: ``block`` computes part[i, j, g] = sum x·q over group g, reducing
    over packed bytes (and the values within a byte) or, for 3 bits, over k; ``packed_linear_out``
    reduces the groups with their scales and zero points into y[i, j]."""
    loops = sch.get_loops(block)
    if len(loops) not in (4, 5):
        return False
    lanes_loop = loops[3]  # bytes (2/4/8 bits) or k (3 bits)
    extent = sch.get(lanes_loop).extent
    if not isinstance(extent, tvm.tirx.IntImm) or extent.value % LANES:
        out = sch.get_sblock("packed_linear_out")
        i, j = sch.get_loops(out)[:2]  # and the groups' loop, unless one group per row
        sch.parallel(sch.fuse(i, j))
        sch.compute_at(block, sch.get_loops(out)[0])
        return True
    extents = [int(sch.get(loop).extent) for loop in loops[2:]]  # groups, bytes or k[, values per byte]
    out = sch.get_sblock("packed_linear_out")
    i, j = sch.get_loops(out)[:2]
    fused = sch.fuse(i, j)
    sch.parallel(fused)
    kv = sch.split(lanes_loop, [None, LANES])[1]
    rf = sch.rfactor(kv, 0)  # partial sums per lane: rf[kv, i, j, g]
    sch.compute_at(block, fused)
    sch.compute_at(rf, fused)
    # compute_at keeps the rf block's order (lane, group, outer, within) but drops unit loops:
    # one group per row (per-channel) has no group loop, 8 bits no within-byte loop
    lane, *rest = sch.get_loops(rf)[1:]
    kept = iter(rest)
    group, outer, *within = [next(kept) if extent > 1 else None
                             for extent in (extents[0], extents[1] // LANES, *extents[2:])]
    reduction = [loop for loop in (outer, *within) if loop is not None]
    sch.reorder(*[loop for loop in (group, *reduction) if loop is not None], lane)
    if within and within[0] is not None:
        sch.unroll(within[0])
    sch.vectorize(lane)
    sch.set_scope(rf, 0, "local")
    sch.set_scope(block, 0, "local")
    # zero the lanes once per group, outside the K loop
    sch.decompose_reduction(rf, reduction[0] if reduction else lane)
    return True
