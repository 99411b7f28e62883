"""Decode's attention as one kernel per layer: a Relax rewrite of the one-query-row chain that
``gqa_attention`` leaves (in-place caches),

    scores = gqa_scores(q, k_cache)                      # [1, heads, 1, n], n = past + 1
    probs  = softmax(scores + mask, axis=-1)             # mask [1, 1 | heads, 1, n]
    probs  = where(isnan(probs), 0, probs)               # (when the graph has it)
    out    = gqa_values(probs, v_cache)                  # [1, heads, 1, head_dim]

into one ``decode_attention`` PrimFunc in three phases: scores (each cached K row read once for its
kv head's group of query heads, the mask added) into a scratch row per query head, the softmax of
each row, then the values (each V row read once per kv head). At decode those were five kernels per
layer (scores, the mask add, softmax, values and a VM dispatch, an allocation and a free for each
intermediate), most of them far smaller than a thread-pool launch. The arithmetic is the unfused
kernels', in their order: head_dim summed in SCORE_LANES lanes then the lanes in turn
(``gqa_attention``'s one-row scores; here for a block of SCORE_LANES positions at once: each head's
[position, lane] tile transposed in registers by shuffles, then the lanes summed in order as vectors
over positions, so the in-order sums do not wait on each other), the mask added, the softmax's max,
``fast_exp``, sum over positions in order and division (``fast_exp.softmax_te``), values summed over
positions in order: decode's outputs are the unfused kernels' bit for bit, hence still prefill's.

Below ``PARALLEL_FROM`` cache positions the phases run on the calling thread. From there they run in
ONE parallel region (``pragma_parallel_launch_point``, a launch and two barriers): the scores split
over blocks of positions, the softmax over query heads, the values over kv heads and halves of
head_dim; each score, maximum, sum and output is still computed by one thread, in the same order, so
the two paths give the same bits. (By kv heads alone, 3 kv heads split 2:1 over 2 threads.)

The chain is declared once as a ``tvm.relax.dpl`` pattern; a graph in another form (a soft cap
between scores and mask, Gemma2; an appending cache) is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from edgeq.targets import fast_exp
from edgeq.targets.gqa_attention import KERNEL_ATTR, SCALES_ATTR, SCORE_LANES, known_shape

FUSED_NAME = "decode_attention"
# cache positions from which the phases run on the thread pool: SmolLM2 decode steps at 128-168
# positions, quiet host (load ~1.3), interleaved (benchmarks/decode_step.py): parallel from 128
# 3.56 / 3.85 / 4.63 ms (min / p10 / median) against one thread's 3.67 / 4.03 / 4.85; in two more
# runs ahead in min and p10, in one of them behind by 2.5% in the median; from 64 no better than
# from 128. On a loaded host (load 3-5) every launch and
# barrier can wait for a descheduled thread and one thread read faster (RESULTS.md: the #19 decode
# attention, session 10)
PARALLEL_FROM = 128
# the scores phase's parallel loop: its items in this many contiguous runs, one tile each (the
# 3 KB tile is over TVM's 1 KB stack limit: one inside the loop over items would be a workspace
# call per item); 2 per thread at 2 threads
SCORE_WORKERS = 4
VALUE_PARTS = 2  # the values phase's items: kv heads x parts of head_dim (3 kv heads: 6 items, 3 per thread)


def decode_attention_pattern():
    """The pattern of the chain, and its named parts (``scores``, ``values`` are the two call_tir)."""
    from tvm.relax.dpl import GlobalVarPattern, TuplePattern

    p = {name: wildcard() for name in ("q", "keys", "length", "mask", "value_cache", "value_length")}
    p["scores_fn"], p["values_fn"] = GlobalVarPattern(), GlobalVarPattern()
    # the kernels' last argument, the cache length, is there when call_te needed it (n = past + 1)
    p["scores"] = is_op("relax.call_tir")(p["scores_fn"], TuplePattern([p["q"], p["keys"], p["length"]])
                                          | TuplePattern([p["q"], p["keys"]]))
    p["masked"] = is_op("relax.add")(p["scores"], p["mask"])
    p["softmax"] = is_op("relax.nn.softmax")(p["masked"])
    cleaned = is_op("relax.where")(is_op("relax.isnan")(p["softmax"]), wildcard(), p["softmax"])
    p["probs"] = cleaned | p["softmax"]
    p["cleaned"] = cleaned
    p["values"] = is_op("relax.call_tir")(p["values_fn"], TuplePattern([p["probs"], p["value_cache"], p["value_length"]])
                                          | TuplePattern([p["probs"], p["value_cache"]]))
    return p["values"], p


def fuse_decode_attention(mod: tvm.IRModule, functions, parallel_from: int = PARALLEL_FROM) -> tvm.IRModule:
    """``mod`` with each decode attention chain (see the module docstring) of the Relax ``functions``
    (names) replaced by one ``decode_attention`` call (on the thread pool from ``parallel_from``
    cache positions); the kernels left unused are removed."""
    pattern, parts = decode_attention_pattern()
    names = list(functions)
    kernels: dict[tuple, tvm.ir.GlobalVar] = {}
    builder = relax.BlockBuilder(mod)

    def rewrite(call, matches):
        fused = _fused_kernel(mod, matches, parts, parallel_from)
        if fused is None:
            return call
        key, func = fused
        if key not in kernels:
            kernels[key] = builder.add_func(func, FUSED_NAME)
        args = [matches[parts[name]] for name in ("q", "keys", "value_cache", "mask")]
        return relax.call_tir(kernels[key], args, call.ty)

    for name in names:
        gv = mod.get_global_var(name)
        builder.update_func(gv, rewrite_call(pattern, rewrite, builder.get()[gv]))
    return relax.transform.DeadCodeElimination(names)(builder.get())


def _fused_kernel(mod, matches, parts, parallel_from):
    """(cache key, PrimFunc) for a matched chain, else None when its parts do not fit the kernel."""
    scores_fn, values_fn = (mod[matches[parts[n]]] for n in ("scores_fn", "values_fn"))
    if _kind(scores_fn) != "scores" or _kind(values_fn) != "values":
        return None
    softmax = matches[parts["softmax"]]
    q, keys, values, mask = (matches[parts[n]] for n in ("q", "keys", "value_cache", "mask"))
    shapes = [_static_shape(x) for x in (q, keys, values)]
    if any(s is None or len(s) != 4 for s in shapes) or any(x.ty.dtype != "float32" for x in (q, keys, values, mask)):
        return None
    (_, heads, rows, head_dim), (_, kv_heads, max_context, key_dim) = shapes[:2]
    mask_shape = known_shape(mask)
    if rows != 1 or shapes[1] != shapes[2] or key_dim != head_dim or head_dim % SCORE_LANES or heads % kv_heads:
        return None
    if int(softmax.attrs.axis) not in (-1, 3) or mask_shape is None or len(mask_shape) != 4:
        return None
    mask_heads = mask_shape[1]
    if not isinstance(mask_heads, tvm.tirx.IntImm) or int(mask_heads) not in (1, heads):
        return None
    q_scale, k_scale = scores_fn.attrs[SCALES_ATTR]
    cleaned = parts["cleaned"] in matches
    key = (heads, kv_heads, head_dim, max_context, float(q_scale), float(k_scale), int(mask_heads), cleaned, parallel_from)
    return key, decode_attention_func(*key)


def _kind(func):
    return func.attrs.get(KERNEL_ATTR) if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None else None


def _static_shape(expr):
    shape = known_shape(expr)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


def decode_attention_func(heads: int, kv_heads: int, head_dim: int, max_context: int, q_scale: float,
                          k_scale: float, mask_heads: int, cleaned: bool, parallel_from: int | None = None):
    """The fused kernel ``(q [1, heads, 1, head_dim], k, v [1, kv_heads, max_context, head_dim],
    mask [1, mask_heads, 1, n]) -> out [1, heads, 1, head_dim]`` over the first ``n`` cache
    positions; ``cleaned``: NaN probabilities become 0 (the graph's ``where(isnan(p), 0, p)``). From
    ``n >= parallel_from`` positions (default ``PARALLEL_FROM``) its three phases run in one parallel
    region, else on the calling thread (see the module docstring)."""
    from tvm.script import tirx as T

    parallel_from = PARALLEL_FROM if parallel_from is None else parallel_from
    group, chunks, lanes = heads // kv_heads, head_dim // SCORE_LANES, SCORE_LANES
    parts = VALUE_PARTS if head_dim % (VALUE_PARTS * lanes) == 0 else 1
    f32 = "float32"
    cq, ck = T.float32(q_scale), T.float32(k_scale)
    lowest = T.min_value(f32)

    def score_items(n):  # the scores phase's: each kv head's blocks, then its last positions
        return kv_heads * (n // lanes + 1)

    def per_worker(n):
        return (score_items(n) + SCORE_WORKERS - 1) // SCORE_WORKERS

    def mask_head(h):
        return h if mask_heads == heads else 0

    def clean(x):
        return T.Select(fast_exp.is_nan(x), T.float32(0), x) if cleaned else x

    # scratch buffers in the default scope: TVM 0.27 gives a "local" one a TVMBackendAllocWorkspace
    # call (one per call, or per parallel task), a "global" one of constant size a stack alloca
    # that LLVM keeps in registers
    def stage_shuffles(step):
        """Lane picks from rows (a, b) = (r, r + step) that swap bit ``step`` of the row and the lane."""
        first = [T.int32(c if not c & step else lanes + c - step) for c in range(lanes)]
        second = [T.int32(c + step if not c & step else lanes + c) for c in range(lanes)]
        return first, second

    assert lanes == 16, "score_block transposes 16 x 16 squares in four stages"
    shuffles = {step: stage_shuffles(step) for step in (1, 2, 4, 8)}
    whole = T.Ramp(0, 1, lanes)

    @T.macro(hygienic=True)
    def transpose_stage(tile, pair, g, step, first, second):
        """One of the four stages of tile[g]'s 16 x 16 transpose: each pair of rows r, r + step
        (bit ``step`` of r clear) shuffled into two (data movement only)."""
        for i in T.unroll(lanes // 2):
            pair[0, whole] = T.Shuffle([tile[g, i // step * 2 * step + i % step, whole],
                                        tile[g, i // step * 2 * step + i % step + step, whole]], first)
            pair[1, whole] = T.Shuffle([tile[g, i // step * 2 * step + i % step, whole],
                                        tile[g, i // step * 2 * step + i % step + step, whole]], second)
            tile[g, i // step * 2 * step + i % step, whole] = pair[0, whole]
            tile[g, i // step * 2 * step + i % step + step, whole] = pair[1, whole]

    @T.macro(hygienic=True)
    def score_block(kv, pb, q, k, mask, probs, tile):
        """Scores + mask of positions [pb * lanes, (pb + 1) * lanes) for kv's query heads: each K
        row read once into one lane vector per head and position, then the lanes summed in order
        for the block's positions at once (a vector over positions: the one-row sums' additions,
        in their order). ``tile``: [head, position, lane], 3 KB for SmolLM2, over the stack's limit."""
        block_sums = T.decl_buffer((group, lanes), f32)  # [head, position]
        pair = T.decl_buffer((2, lanes), f32)
        for pp in range(lanes):
            for g in T.unroll(group):
                for lane in T.vectorized(lanes):
                    tile[g, pp, lane] = T.float32(0)
                for c in T.unroll(chunks):
                    for lane in T.vectorized(lanes):
                        tile[g, pp, lane] = tile[g, pp, lane] + q[0, kv * group + g, 0, c * lanes + lane] * cq * (
                            k[0, kv, pb * lanes + pp, c * lanes + lane] * ck)
        for g in T.unroll(group):
            # the head's [position, lane] square transposed in place, so that each lane is a
            # vector over positions (a column read builds a vector from 16 scalar inserts)
            transpose_stage(tile, pair, g, 1, shuffles[1][0], shuffles[1][1])
            transpose_stage(tile, pair, g, 2, shuffles[2][0], shuffles[2][1])
            transpose_stage(tile, pair, g, 4, shuffles[4][0], shuffles[4][1])
            transpose_stage(tile, pair, g, 8, shuffles[8][0], shuffles[8][1])
            for pp in T.vectorized(lanes):
                block_sums[g, pp] = T.float32(0)
            for lane in T.unroll(lanes):
                for pp in T.vectorized(lanes):
                    block_sums[g, pp] = block_sums[g, pp] + tile[g, lane, pp]
            for pp in T.vectorized(lanes):
                probs[kv * group + g, pb * lanes + pp] = block_sums[g, pp] + mask[
                    0, mask_head(kv * group + g), 0, pb * lanes + pp]

    @T.macro(hygienic=True)
    def score_tail(kv, n, q, k, mask, probs):
        """Scores + mask of the positions after the last whole block, one at a time."""
        lane_sums = T.decl_buffer((group, lanes), f32)
        row = T.decl_buffer((group,), f32)
        for p in range(n // lanes * lanes, n):
            for g in T.unroll(group):
                for lane in T.vectorized(lanes):
                    lane_sums[g, lane] = T.float32(0)
                for c in T.unroll(chunks):
                    for lane in T.vectorized(lanes):
                        lane_sums[g, lane] = lane_sums[g, lane] + q[0, kv * group + g, 0, c * lanes + lane] * cq * (
                            k[0, kv, p, c * lanes + lane] * ck)
                row[g] = T.float32(0)
                for lane in T.unroll(lanes):
                    row[g] = row[g] + lane_sums[g, lane]
                probs[kv * group + g, p] = row[g] + mask[0, mask_head(kv * group + g), 0, p]

    @T.macro(hygienic=True)
    def softmax_row(h, n, probs):
        """Softmax of head h's row: max (in lanes: a max is exact in any order), exp of the
        difference and the division in vectors of positions, the sum in order."""
        lane_max = T.decl_buffer((lanes,), f32)
        top = T.decl_buffer((1,), f32)
        total = T.decl_buffer((1,), f32)
        for lane in T.vectorized(lanes):
            lane_max[lane] = lowest
        for pc in range(n // lanes):
            for lane in T.vectorized(lanes):
                lane_max[lane] = T.max(lane_max[lane], probs[h, pc * lanes + lane])
        top[0] = lowest
        for lane in T.unroll(lanes):
            top[0] = T.max(top[0], lane_max[lane])
        for p in range(n // lanes * lanes, n):
            top[0] = T.max(top[0], probs[h, p])
        for pc in range(n // lanes):
            for lane in T.vectorized(lanes):
                probs[h, pc * lanes + lane] = fast_exp.fast_exp(probs[h, pc * lanes + lane] - top[0])
        for p in range(n // lanes * lanes, n):
            probs[h, p] = fast_exp.fast_exp(probs[h, p] - top[0])
        total[0] = T.float32(0)
        for p in range(n):
            total[0] = total[0] + probs[h, p]
        for pc in range(n // lanes):
            for lane in T.vectorized(lanes):
                probs[h, pc * lanes + lane] = clean(probs[h, pc * lanes + lane] / total[0])
        for p in range(n // lanes * lanes, n):
            probs[h, p] = clean(probs[h, p] / total[0])

    @T.macro(hygienic=True)
    def values_part(kv, part, width, n, v, out, probs):
        """Outputs [part * width, (part + 1) * width) of kv's query heads: each V row's slice read
        once, the group's outputs accumulated in registers, each summed over positions in order."""
        acc = T.decl_buffer((group, width), f32)
        for g in T.unroll(group):
            for d in T.vectorized(width):
                acc[g, d] = T.float32(0)
        for p in range(n):
            for g in T.unroll(group):
                for d in T.vectorized(width):
                    acc[g, d] = acc[g, d] + probs[kv * group + g, p] * v[0, kv, p, part * width + d]
        for g in T.unroll(group):
            for d in T.vectorized(width):
                out[0, kv * group + g, 0, part * width + d] = acc[g, d]

    @T.macro(hygienic=True)
    def scores_item(i, n, q, k, mask, probs, tile):
        """Item i of the scores phase: kv head i // (blocks + 1), its block i % (blocks + 1), the
        last one of each head its positions after the whole blocks."""
        if i % (n // lanes + 1) < n // lanes:
            score_block(i // (n // lanes + 1), i % (n // lanes + 1), q, k, mask, probs, tile)
        else:
            score_tail(i // (n // lanes + 1), n, q, k, mask, probs)

    @T.prim_func(private=True)
    def decode_attention(var_q: T.handle, var_k: T.handle, var_v: T.handle, var_mask: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        n = T.int64()
        q = T.match_buffer(var_q, (1, heads, 1, head_dim), f32)
        k = T.match_buffer(var_k, (1, kv_heads, max_context, head_dim), f32)
        v = T.match_buffer(var_v, (1, kv_heads, max_context, head_dim), f32)
        mask = T.match_buffer(var_mask, (1, mask_heads, 1, n), f32)
        out = T.match_buffer(var_out, (1, heads, 1, head_dim), f32)
        probs = T.decl_buffer((heads, max_context), f32)  # every phase's rows, shared by the threads
        if n >= parallel_from:
            # one region: scores by blocks of positions, softmax by query head, values by kv head
            # and part of head_dim, a barrier after each of the first two
            with T.attr(0, "pragma_parallel_launch_point", 1):
                with T.attr(0, "pragma_parallel_barrier_when_finish", 1):
                    for w in T.parallel(SCORE_WORKERS):
                        # a tile per worker (a buffer inside a parallel loop is its iteration's)
                        tile = T.decl_buffer((group, lanes, lanes), f32)
                        for i in range(w * per_worker(n), T.min((w + 1) * per_worker(n), score_items(n))):
                            scores_item(i, n, q, k, mask, probs, tile)
                with T.attr(0, "pragma_parallel_barrier_when_finish", 1):
                    for h in T.parallel(heads):
                        softmax_row(h, n, probs)
                for i in T.parallel(kv_heads * parts):
                    values_part(i // parts, i % parts, head_dim // parts, n, v, out, probs)
        else:
            tile = T.decl_buffer((group, lanes, lanes), f32)
            for kv in range(kv_heads):
                for pb in range(n // lanes):
                    score_block(kv, pb, q, k, mask, probs, tile)
                score_tail(kv, n, q, k, mask, probs)
                for g in range(group):
                    softmax_row(kv * group + g, n, probs)
                values_part(kv, 0, head_dim, n, v, out, probs)  # the whole row: V read once

    return decode_attention
