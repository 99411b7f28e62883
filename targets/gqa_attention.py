"""Grouped-query attention without the repeated cache: ``repeat_kv`` as torch exports it
(``expand_dims`` → ``broadcast_to`` → ``reshape`` of the ``[1, kv_heads, past, head_dim]`` cache
to ``[1, heads, past, head_dim]``), then ``transpose`` and a scale for ``Q · Kᵀ``, copies the
whole cache three times per layer and step: at decode those copies cost more than every
weight read. Here the two attention matmuls read the cache where it is, head ``h`` taking
kv head ``h // group``:

    scores[b, h, s, p] = sum_d (Q[b, h, s, d] · cq) · (K[b, h // group, p, d] · ck)
    out[b, h, s, d]    = sum_p P[b, h, s, p] · V[b, h // group, p, d]

(the same products as the unfused graph, scales included). ``GqaSchedule`` schedules both on
CPU (the generic rules left them scalar, with a division by the symbolic cache length per
element: at decode ``Q · Kᵀ`` took 17% of a step): rows (head, position) go to threads; scores
sum 16 lanes of d per cache position (rfactor), values keep the head_dim row of outputs in
vector registers across the cache positions. At one query row (decode) both take a schedule of
their own: per kv head, each cached K / V row is read once for the group's query heads, on one
thread unless the work at the cache bound is worth a launch (``worth_threads``). A graph in
another form is left as it is.
"""

from __future__ import annotations

import tvm
import tvm.sym
from tvm import relax, s_tir, te
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.s_tir.dlight.base import ScheduleRule

from edgeq.targets.schedules._loops import worth_threads

_OPS = {name: tvm.ir.Op.get(f"relax.{name}") for name in
        ("matmul", "multiply", "reshape", "permute_dims", "broadcast_to", "expand_dims", "concat")}

# FuseOps would inline the producers of Q (the rotary embedding) into the reduction, recomputing
# them for every cache position: the kernels fuse with nothing
_OPAQUE = {"op_pattern": 8}
KERNEL_ATTR = "edgeq.gqa"  # "scores" or "values" on the two PrimFuncs, for GqaSchedule
CACHE_LENGTH = "cache_length"  # the in-place functions' last parameter (``_Rewriter.finish``)
SCALES_ATTR = "edgeq.gqa_scales"  # (q scale, k scale) of a scores kernel, for decode_attention's fused kernel
SCORE_LANES = 16  # float lanes of head_dim summed at once per cache position (one AVX-512 vector)


def grouped_query_attention(mod: tvm.IRModule, functions, max_context: int | None = None) -> tvm.IRModule:
    """``mod`` with the attention matmuls of the Relax ``functions`` (names) reading the cache
    ungrouped; the repeat / transpose / scale bindings they leave unused are removed.

    With ``max_context``, each cache parameter ``[1, kv_heads, past, head_dim]`` that the graph
    appends to (``concat``) becomes a ``[1, kv_heads, max_context, head_dim]`` array that
    ``write_cache_func`` writes the new positions into in place, the rewritten attention reads its
    first ``past + seq`` positions and the function returns it: no copy of the cache per step. The
    functions then take a last parameter ``cache_length`` (see ``_Rewriter.finish``). When some
    other op still reads an appended cache (attention in another form), nothing is kept in place."""
    names = list(functions)
    out = _rewrite(mod, names, max_context)
    if max_context is not None and any(_reads_a_replaced_cache(out[name], mod[name]) for name in names):
        out = _rewrite(mod, names, None)
    return out


def _rewrite(mod, names, max_context):
    rewriter = _Rewriter(mod, max_context)
    for name in names:
        gv = mod.get_global_var(name)
        rewriter.start(mod[gv])
        func = rewriter.visit_expr(mod[gv])
        rewriter.builder_.update_func(gv, rewriter.finish(func))
    return relax.transform.DeadCodeElimination(names)(rewriter.builder_.get())


def _reads_a_replaced_cache(new, old) -> bool:
    """Whether ``new`` still reads a parameter of ``old`` that it no longer takes."""
    kept = list(new.params)
    used = relax.analysis.free_vars(new.body)
    return any(any(u.same_as(p) for u in used) and not any(k.same_as(p) for k in kept) for p in old.params)


def write_cache_func(heads: int, max_context: int, head_dim: int, dtype: str):
    """``cache[0, h, position_ids[0, s], d] = new[0, h, s, d]``, in place (``call_tir_inplace``)."""
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def write_cache(var_cache: T.handle, var_new: T.handle, var_positions: T.handle):
        T.func_attr({"op_pattern": 8})  # opaque: fused into nothing (FuseTIR would mix its buffers up)
        seq = T.int64()
        cache = T.match_buffer(var_cache, (1, heads, max_context, head_dim), dtype)
        new = T.match_buffer(var_new, (1, heads, seq, head_dim), dtype)
        positions = T.match_buffer(var_positions, (1, seq), "int64")
        for h, s, d in T.grid(T.int64(heads), seq, T.int64(head_dim)):
            cache[0, h, positions[0, s], d] = new[0, h, s, d]

    return write_cache


def scores_te(q, k, q_scale: float, k_scale: float, length=None):
    """``length``: the cache positions read (the first ones of ``k``), default all."""
    group = q.shape[1] // k.shape[1]
    d = te.reduce_axis((0, q.shape[3]), name="d")
    return te.compute(
        (q.shape[0], q.shape[1], q.shape[2], k.shape[2] if length is None else length),
        lambda b, h, s, p: te.sum(q[b, h, s, d] * tvm.tirx.const(q_scale, q.dtype)
                                  * (k[b, h // group, p, d] * tvm.tirx.const(k_scale, k.dtype)), axis=d),
        name="gqa_scores")


def values_te(probs, v):
    group = probs.shape[1] // v.shape[1]
    p = te.reduce_axis((0, probs.shape[3]), name="p")  # the first positions of v when it is a larger cache
    return te.compute((probs.shape[0], probs.shape[1], probs.shape[2], v.shape[3]),
                      lambda b, h, s, d: te.sum(probs[b, h, s, p] * v[b, h // group, p, d], axis=p),
                      name="gqa_values")


class GqaSchedule(ScheduleRule):
    """The two attention kernels (by their ``edgeq.gqa`` attribute) on CPU; None for any other."""

    def apply(self, func, target, tunable):
        kind = func.attrs.get(KERNEL_ATTR) if func.attrs is not None else None
        if kind not in ("scores", "values"):
            return None
        sch = s_tir.Schedule(func)
        block = sch.get_sblock(f"gqa_{kind}")
        one_row = _one_row(sch, block)
        if kind == "scores":
            return (_schedule_one_row_scores if one_row else _schedule_scores)(sch, block)
        return (_schedule_one_row_values if one_row else _schedule_values)(sch, block)


def _one_row(sch, block) -> bool:
    """Whether the kernel computes one query row per head (decode: ``seq`` bound to 1)."""
    extent = sch.get(sch.get_loops(block)[2]).extent  # loops (b, h, s, ...)
    return isinstance(extent, tvm.tirx.IntImm) and int(extent) == 1


def _group(sch, block, heads: int) -> int:
    """Query heads per kv head: ``heads`` over the kv heads of the cache the block reads."""
    for region in sch.get(block).reads:
        shape = region.source.shape
        kv_heads = shape[1] if len(shape) == 4 else None
        if isinstance(kv_heads, tvm.tirx.IntImm) and int(kv_heads) != heads:
            return heads // int(kv_heads)
    return 1


def _per_kv_head(sch, block):
    """A one-row kernel's loops with the heads split into (kv head, group member), and whether its
    work at the cache bound is worth a thread-pool launch."""
    loops = sch.get_loops(block)
    heads = int(sch.get(loops[1]).extent)
    group = _group(sch, block, heads)
    parallel = worth_threads(sch, loops)
    kv, member = sch.split(loops[1], [heads // group, group])
    return [loops[0], kv, member, *loops[2:]], parallel


def _schedule_one_row_scores(sch, block):
    """Decode's ``Q · Kᵀ``: per kv head, each cache position's row of K is read once for the
    group's query heads (unrolled, so ``h // group`` is a constant), head_dim summed in
    SCORE_LANES vector lanes then in a register, in the order of ``_schedule_scores`` (decode's
    scores equal prefill's bit for bit); kv heads in parallel only when the work at the cache bound is worth
    a thread-pool launch (a launch costs microseconds, the whole kernel a few)."""
    (_, _, _, _, _, d), parallel = _per_kv_head(sch, block)
    if int(sch.get(d).extent) % SCORE_LANES:
        return None
    _, lane = sch.split(d, [None, SCORE_LANES])
    rf = sch.rfactor(lane, 0)
    b, kv, member, s, p, chunk, lane = sch.get_loops(rf)
    sch.reorder(s, p, member)
    rows = sch.fuse(b, kv, s)
    if parallel:
        sch.parallel(rows)
    sch.reverse_compute_at(block, member)
    sch.set_scope(rf, 0, "local")
    total = sch.cache_write(block, 0, "local")  # the lanes' sum in a register, stored once
    sch.reverse_compute_at(total, member)
    sch.unroll(member)
    sch.vectorize(lane)
    sch.unroll(chunk)
    sch.decompose_reduction(rf, chunk)
    sch.unroll(sch.get_loops(block)[-1])
    return sch


def _schedule_one_row_values(sch, block):
    """Decode's ``P · V``: per kv head, each cache position's row of V is read once for the
    group's query heads, whose head_dim outputs accumulate in vector registers; one thread
    unless the work at the cache bound is worth a launch."""
    (b, kv, member, s, d, p), parallel = _per_kv_head(sch, block)
    sch.reorder(s, member)
    rows = sch.fuse(b, kv, s)
    if parallel:
        sch.parallel(rows)
    acc = sch.cache_write(block, 0, "global")  # group x head_dim floats on the stack: registers
    sch.reverse_compute_at(acc, rows)
    sch.reorder(p, member, d)
    sch.vectorize(d)
    sch.unroll(member)
    sch.decompose_reduction(block, p)
    sch.vectorize(sch.get_loops(acc)[-1])
    return sch


def _schedule_scores(sch, block):
    """Rows (b, h, s) in parallel; per cache position the head_dim sum in SCORE_LANES vector lanes
    (rfactor), then one sum of the lanes."""
    d = sch.get_loops(block)[-1]
    extent = sch.get(d).extent
    if not isinstance(extent, tvm.tirx.IntImm) or int(extent) % SCORE_LANES:
        return None
    _, lanes = sch.split(d, [None, SCORE_LANES])
    rf = sch.rfactor(lanes, 0)
    b, h, s, p, chunk, lanes = sch.get_loops(rf)
    sch.parallel(sch.fuse(b, h, s))
    sch.reverse_compute_at(block, p)
    sch.vectorize(lanes)
    sch.unroll(chunk)
    sch.decompose_reduction(rf, chunk)
    return sch


def _schedule_values(sch, block):
    """Rows (b, h, s) in parallel; the row's head_dim outputs accumulate in vector registers over
    the cache positions (V is contiguous in head_dim), written once."""
    b, h, s, d, p = sch.get_loops(block)
    rows = sch.fuse(b, h, s)
    sch.parallel(rows)
    acc = sch.cache_write(block, 0, "global")  # head_dim floats on the stack: registers
    sch.reverse_compute_at(acc, rows)
    sch.reorder(p, d)
    sch.vectorize(d)
    sch.decompose_reduction(block, p)
    sch.vectorize(sch.get_loops(acc)[-1])
    return sch


def known_shape(expr):
    """The dimensions of a tensor expression with a known shape, else None."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return list(ty.shape.values)


def _swaps_last_two(call) -> bool:
    axes = list(map(int, call.attrs.axes))
    return axes == [*range(len(axes) - 2), len(axes) - 1, len(axes) - 2]


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, max_context):
        super().__init__(mod)
        self.max_context = max_context

    def start(self, func):
        self._params = {p.name: p for p in func.params}
        self._full = {}  # cache parameter name -> its [1, kv_heads, max_context, head_dim] replacement
        self._written = {}  # cache parameter name -> the full cache after this step's in-place write

    def finish(self, func):
        """``func`` with the cache parameters written in place replaced by the full caches and a last
        parameter ``cache_length``, an int8 tensor ``[past]`` whose shape is the number of tokens
        already cached (an ``R.Shape`` would do, but does not pass over RPC)."""
        if not self._written:
            return func
        params = [self._full.get(p.name, p) for p in func.params]
        past = known_shape(self._params[next(iter(self._written))])[2]
        params.append(relax.Var(CACHE_LENGTH, relax.TensorType([past], "int8")))
        return relax.Function(params, func.body, None, func.is_pure, func.attrs)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call):
            return call
        if call.op == _OPS["concat"]:
            self._write_in_place(call)
            return call
        if call.op != _OPS["matmul"]:
            return call
        lhs, rhs = call.args
        keys = self._scaled(rhs)
        if keys is not None:
            key_t, k_scale = keys
            key = self._ungrouped(self._through(self._reshapes(key_t), "permute_dims", _swaps_last_two))
            query = self._scaled(lhs)
            if key is not None and self._fits(query[0], key):
                full, length = self._in_place(key)
                return self.builder_.call_te(scores_te, query[0], full, query[1], k_scale, length,
                                             primfunc_name_hint="gqa_scores",
                                             primfunc_attrs={**_OPAQUE, KERNEL_ATTR: "scores",
                                                             SCALES_ATTR: [query[1], k_scale]})
        value = self._ungrouped(rhs)
        if value is not None and self._fits(lhs, value, last_is_head_dim=False):
            full, _ = self._in_place(value)
            return self.builder_.call_te(values_te, lhs, full, primfunc_name_hint="gqa_values",
                                         primfunc_attrs={**_OPAQUE, KERNEL_ATTR: "values"})
        return call

    def visit_tuple_(self, tup):
        tup = super().visit_tuple_(tup)
        fields = [self._in_place(f)[0] if isinstance(f, relax.Var) else f for f in tup.fields]
        return relax.Tuple(fields) if any(not a.same_as(b) for a, b in zip(fields, tup.fields)) else tup

    def _cache_parameter(self, concat):
        """The name of the ``[1, kv_heads, past, head_dim]`` parameter that ``concat`` appends new
        positions to (axis 2), else None."""
        if self.max_context is None or not isinstance(concat.args[0], relax.Tuple) or len(concat.args[0].fields) != 2:
            return None
        past = concat.args[0].fields[0]
        shape = known_shape(past) if isinstance(past, relax.Var) else None
        if shape is None or len(shape) != 4 or int(concat.attrs.axis) not in (2, -2):
            return None
        if past.name not in self._params or not self._params[past.name].same_as(past) or not isinstance(shape[2], tvm.tirx.Var):
            return None
        return past.name

    def _write_in_place(self, concat):
        """Emit the in-place write of ``concat``'s new positions into the full cache (at the
        positions ``position_ids`` gives: the session's ``past .. past + seq``)."""
        name = self._cache_parameter(concat)
        positions = self._params.get("position_ids")
        if name is None or positions is None or name in self._written:
            return
        past, new = concat.args[0].fields
        _, heads, _, head_dim = known_shape(past)
        full_ty = relax.TensorType([1, heads, self.max_context, head_dim], past.ty.dtype)
        self._full[name] = relax.Var(name, full_ty)
        write = self.builder_.add_func(write_cache_func(int(heads), self.max_context, int(head_dim), past.ty.dtype),
                                       "write_cache")
        self._written[name] = self.builder_.emit(
            relax.op.call_tir_inplace(write, [self._full[name], new, positions], 0, full_ty))

    def _in_place(self, cache):
        """(the full cache written in place, the positions to read) for ``cache`` (a concat of a
        cache parameter and new positions), else (``cache``, None)."""
        concat = self._bound(cache, "concat")
        name = self._cache_parameter(concat) if concat is not None else None
        if name not in self._written:
            return cache, None
        return self._written[name], known_shape(cache)[2]

    def _bound(self, expr, op):
        """The call of ``op`` that ``expr`` (a variable) is bound to, else None."""
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        return expr if isinstance(expr, relax.Call) and expr.op == _OPS[op] else None

    def _through(self, expr, op, check=lambda call: True):
        call = self._bound(expr, op)
        return call.args[0] if call is not None and check(call) else None

    def _reshapes(self, expr):
        """``expr`` before any chain of reshapes."""
        while (call := self._bound(expr, "reshape")) is not None:
            expr = call.args[0]
        return expr

    def _scaled(self, expr):
        """(x, c) when ``expr`` is ``x · c`` with a scalar constant ``c``, else (expr, 1.0)."""
        call = self._bound(expr, "multiply")
        if call is not None:
            x, c = call.args
            value = c.value.numpy() if isinstance(c, tvm.ir.expr.GenericConst) and hasattr(c.value, "numpy") else None
            if value is not None and value.size == 1:
                return x, float(value.reshape(()))
        return expr, 1.0

    def _ungrouped(self, expr):
        """The ``[1, kv_heads, past, head_dim]`` cache when ``expr`` (a ``[.., heads, past,
        head_dim]`` value, possibly reshaped, or for keys its transpose's input) repeats each kv
        head ``group`` times with expand_dims(axis 2) → broadcast_to; else None."""
        if expr is None:
            return None
        broadcast = self._bound(self._reshapes(expr), "broadcast_to")
        expanded = self._bound(broadcast.args[0], "expand_dims") if broadcast is not None else None
        if expanded is None or list(map(int, expanded.attrs.axis)) != [2]:
            return None
        cache = expanded.args[0]
        shape = known_shape(cache)
        repeated = known_shape(broadcast)
        if shape is None or len(shape) != 4 or repeated is None or len(repeated) != 5:
            return None
        analyzer = tvm.sym.Analyzer()
        (b, kv_heads, past, head_dim), (rb, rkv, _, rpast, rhead_dim) = shape, repeated
        same = all(analyzer.can_prove_equal(x, y) for x, y in ((b, rb), (kv_heads, rkv), (past, rpast), (head_dim, rhead_dim)))
        return cache if same else None

    def _fits(self, lhs, cache, last_is_head_dim: bool = True) -> bool:
        """``lhs`` is ``[b, heads, s, head_dim]`` (scores) or ``[b, heads, s, past]`` (values)
        with heads a multiple of the cache's kv heads."""
        analyzer = tvm.sym.Analyzer()
        shape = known_shape(lhs)
        if shape is None or len(shape) != 4:
            return False
        b, heads, _, last = shape
        cb, kv_heads, past, head_dim = known_shape(cache)
        if not all(isinstance(x, tvm.tirx.IntImm) for x in (heads, kv_heads)) or int(heads) % int(kv_heads):
            return False
        if lhs.ty.dtype != cache.ty.dtype or not analyzer.can_prove_equal(b, cb):
            return False
        return analyzer.can_prove_equal(last, head_dim if last_is_head_dim else past)
