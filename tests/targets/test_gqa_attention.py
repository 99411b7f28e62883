"""targets/gqa_attention.py: the attention matmuls read a grouped KV cache in place. Built inline
as torch exports it (repeat_kv by expand_dims → broadcast_to → reshape, transposed and scaled
keys), rewritten, compiled before and after and compared; a graph without the repeat is left alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir

from edgeq.targets.cpu_pipeline import schedule_kernels
from edgeq.targets.gqa_attention import grouped_query_attention

HEADS, KV_HEADS, SEQ, PAST, HEAD_DIM = 4, 2, 3, 5, 16


def attention(grouped: bool, seq: int = SEQ) -> tvm.IRModule:
    kv = KV_HEADS if grouped else HEADS
    q = relax.Var("q", relax.TensorType((1, HEADS, seq, HEAD_DIM), "float32"))
    k = relax.Var("k", relax.TensorType((1, kv, PAST, HEAD_DIM), "float32"))
    v = relax.Var("v", relax.TensorType((1, kv, PAST, HEAD_DIM), "float32"))
    bb = relax.BlockBuilder()
    op = relax.op
    with bb.function("main", [q, k, v]):
        with bb.dataflow():
            def repeated(x):
                if not grouped:
                    return x
                e = bb.emit(op.expand_dims(x, axis=[2]))
                b = bb.emit(op.broadcast_to(e, (1, KV_HEADS, HEADS // KV_HEADS, PAST, HEAD_DIM)))
                return bb.emit(op.reshape(b, (1, HEADS, PAST, HEAD_DIM)))
            kt = bb.emit(op.permute_dims(bb.emit(op.reshape(repeated(k), (HEADS, PAST, HEAD_DIM))), axes=[0, 2, 1]))
            ks = bb.emit(op.multiply(bb.emit(op.reshape(kt, (1, HEADS, HEAD_DIM, PAST))), relax.const(0.5, "float32")))
            qs = bb.emit(op.multiply(q, relax.const(0.5, "float32")))
            probs = bb.emit(op.nn.softmax(bb.emit(op.matmul(qs, ks)), axis=-1))
            out = bb.emit_output(op.matmul(probs, repeated(v)))
        bb.emit_func_output(out)
    return bb.get()


def run(mod, args):
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def calls(mod, name: str) -> int:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) and e.op.name == name else None)
    return len(found)


def in_parallel(func, block: str) -> bool:
    """Whether ``block``'s outermost loop (the rows) runs on the thread pool."""
    sch = s_tir.Schedule(func)
    return sch.get(sch.get_loops(sch.get_sblock(block))[0]).kind == tvm.tirx.ForKind.PARALLEL


@pytest.mark.parametrize("seq", [SEQ, 1], ids=["rows", "one_row"])
def test_grouped_attention_reads_the_cache_in_place(seq):
    """At one query row (decode) GqaSchedule takes its one-row schedules: same values, and for
    this tiny cache no thread-pool launch."""
    before = attention(grouped=True, seq=seq)
    after = grouped_query_attention(before, ["main"])
    assert calls(before, "relax.broadcast_to") == 2 and calls(after, "relax.broadcast_to") == 0
    assert calls(after, "relax.matmul") == 0 and calls(after, "relax.permute_dims") == 0
    assert {gv.name_hint for gv in after.get_global_vars()} >= {"gqa_scores", "gqa_values"}
    rng = np.random.default_rng(0)
    args = [rng.normal(size=s).astype(np.float32) for s in ((1, HEADS, seq, HEAD_DIM), (1, KV_HEADS, PAST, HEAD_DIM),
                                                              (1, KV_HEADS, PAST, HEAD_DIM))]
    expected = run(before, args)
    np.testing.assert_allclose(run(after, args), expected, rtol=1e-5, atol=1e-6)
    # edgeq's CPU schedules of the two kernels (GqaSchedule): the same values
    scheduled = schedule_kernels(after, tvm.target.Target("llvm"))
    kernels = {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert all(kernels[name].attrs["tirx.is_scheduled"] for name in ("gqa_scores", "gqa_values"))
    assert all(in_parallel(kernels[name], block) == (seq != 1)
               for name, block in (("gqa_scores", "gqa_scores"), ("gqa_values", "gqa_values_update")))
    np.testing.assert_allclose(run(scheduled, args), expected, rtol=1e-5, atol=1e-6)


def test_attention_without_repeat_is_left_alone():
    before = attention(grouped=False)
    after = grouped_query_attention(before, ["main"])
    assert calls(after, "relax.matmul") == 2
    tvm.ir.assert_structural_equal(after["main"], before["main"])


def test_decode_scores_equal_prefills_bit_for_bit():
    """The one-row ``Q · Kᵀ`` sums head_dim in the generic schedule's order: decode's scores are
    prefill's to the bit (a token decoded equals the same token prefilled)."""
    from tvm import s_tir, te, tirx

    from edgeq.targets import gqa_attention

    length = tirx.Var("n", "int64")
    q = te.placeholder((1, HEADS, 1, 2 * HEAD_DIM), name="q")
    k = te.placeholder((1, KV_HEADS, 8, 2 * HEAD_DIM), name="k")
    func = te.create_prim_func([q, k, gqa_attention.scores_te(q, k, 0.25, 0.5, length)]).with_attr(
        gqa_attention.KERNEL_ATTR, "scores")
    rng = np.random.default_rng(1)
    args = [rng.normal(size=(1, HEADS, 1, 2 * HEAD_DIM)), rng.normal(size=(1, KV_HEADS, 8, 2 * HEAD_DIM)),
            np.zeros((1, HEADS, 1, PAST))]
    generic = s_tir.Schedule(func)
    outs = []
    for sch in (gqa_attention._schedule_scores(generic, generic.get_sblock("gqa_scores")),
                gqa_attention.GqaSchedule().apply(func, "llvm", False)):
        tensors = [tvm.runtime.tensor(a.astype(np.float32)) for a in args]
        tvm.compile(sch.mod, target="llvm")(*tensors)
        outs.append(tensors[-1].numpy())
    np.testing.assert_array_equal(outs[1], outs[0])
    assert np.abs(outs[0]).max() > 0
