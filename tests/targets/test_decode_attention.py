"""targets/decode_attention.py: decode's attention chain (gqa_scores, mask add, softmax, NaN
clean-up, gqa_values over an in-place cache) becomes one kernel. Built inline in the form
``gqa_attention`` leaves it, compiled with edgeq's CPU pipeline before and after: the outputs are
equal bit for bit; a chain with a soft cap between scores and mask is left alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from edgeq.targets import gqa_attention as gqa
from edgeq.targets.decode_attention import FUSED_NAME, fuse_decode_attention
from _relax_testing import cpu_vm

HEADS, KV_HEADS, HEAD_DIM, MAX_CONTEXT, PAST = 6, 2, 32, 40, 36  # 37 positions read: two vectors of 16 and 5 more
Q_SCALE, K_SCALE = 0.25, 0.5


def decode_chain(mask_heads: int = 1, cleaned: bool = True, soft_cap: bool = False) -> tvm.IRModule:
    past = tirx.Var("past", "int64")
    q = relax.Var("q", relax.TensorType((1, HEADS, 1, HEAD_DIM), "float32"))
    k = relax.Var("k", relax.TensorType((1, KV_HEADS, MAX_CONTEXT, HEAD_DIM), "float32"))
    v = relax.Var("v", relax.TensorType((1, KV_HEADS, MAX_CONTEXT, HEAD_DIM), "float32"))
    mask = relax.Var("mask", relax.TensorType((1, mask_heads, 1, past + 1), "float32"))
    length = relax.Var("cache_length", relax.TensorType((past,), "int8"))  # defines past, as in a generation artifact
    bb = relax.BlockBuilder()
    op = relax.op
    with bb.function("decode", [q, k, v, mask, length]):
        with bb.dataflow():
            scores = bb.emit(bb.call_te(gqa.scores_te, q, k, Q_SCALE, K_SCALE, past + 1, primfunc_name_hint="gqa_scores",
                                        primfunc_attrs={"op_pattern": 8, gqa.KERNEL_ATTR: "scores",
                                                        gqa.SCALES_ATTR: [Q_SCALE, K_SCALE]}))
            if soft_cap:
                scores = bb.emit(op.multiply(op.tanh(scores), relax.const(30.0, "float32")))
            probs = bb.emit(op.nn.softmax(bb.emit(op.add(scores, mask)), axis=-1))
            if cleaned:
                probs = bb.emit(op.where(op.isnan(probs), relax.const(0.0, "float32"), probs))
            out = bb.emit_output(bb.call_te(gqa.values_te, probs, v, primfunc_name_hint="gqa_values",
                                            primfunc_attrs={"op_pattern": 8, gqa.KERNEL_ATTR: "values"}))
        bb.emit_func_output(out)
    return bb.get()


def run(mod, args):
    _, vm = cpu_vm(mod)
    return vm["decode"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def inputs(mask_heads: int, past: int = PAST):
    rng = np.random.default_rng(3)
    shapes = [(1, HEADS, 1, HEAD_DIM), (1, KV_HEADS, MAX_CONTEXT, HEAD_DIM), (1, KV_HEADS, MAX_CONTEXT, HEAD_DIM)]
    args = [rng.normal(size=s).astype(np.float32) for s in shapes]
    mask = np.zeros((1, mask_heads, 1, past + 1), np.float32)
    mask[..., :min(3, past)] = np.finfo(np.float32).min  # positions masked out, as the graph's where(..., 0, -max)
    return [*args, mask, np.zeros(past, np.int8)]


def calls_to(mod, name: str) -> int:
    found = []
    relax.analysis.post_order_visit(mod["decode"], lambda e: found.append(e) if isinstance(e, relax.Call) and any(
        isinstance(a, tvm.ir.GlobalVar) and a.name_hint.startswith(name) for a in e.args) else None)
    return len(found)


@pytest.mark.parametrize("mask_heads,cleaned,parallel_from", [(1, True, PAST + 1), (HEADS, False, PAST + 2)],
                         ids=["shared_mask_parallel", "per_head_mask_serial"])
def test_decode_attention_is_one_kernel_equal_bit_for_bit(mask_heads, cleaned, parallel_from):
    """Kv heads on the thread pool from ``parallel_from`` positions (here PAST + 1 are read)."""
    before = decode_chain(mask_heads, cleaned)
    after = fuse_decode_attention(before, ["decode"], parallel_from)
    assert calls_to(after, FUSED_NAME) == 1
    assert calls_to(after, "gqa_") == 0 and "softmax" not in str(after["decode"])
    assert not any(gv.name_hint.startswith("gqa_") for gv in after.get_global_vars())  # the unused kernels removed
    args = inputs(mask_heads)
    expected = run(before, args)
    np.testing.assert_array_equal(run(after, args), expected)
    # against numpy: the masked positions take no weight
    q, k, v, mask, _ = args
    group = HEADS // KV_HEADS
    keys, values = (np.repeat(x[0, :, :PAST + 1], group, axis=0) for x in (k, v))
    scores = np.einsum("hd,hpd->hp", q[0, :, 0] * Q_SCALE, keys * K_SCALE) + mask[0, :, 0]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    reference = np.einsum("hp,hpd->hd", probs / probs.sum(-1, keepdims=True), values)
    np.testing.assert_allclose(expected[0, :, 0], reference, rtol=1e-5, atol=1e-6)


def test_a_soft_capped_chain_is_left_alone():
    before = decode_chain(soft_cap=True)
    after = fuse_decode_attention(before, ["decode"])
    assert calls_to(after, FUSED_NAME) == 0 and calls_to(after, "gqa_") == 2


def test_parallel_and_serial_paths_at_every_kind_of_length():
    """One artifact, lengths on both sides of ``parallel_from`` (20 positions): blocks of 16 whole
    or not, none whole, the cache full; both paths equal the five-kernel chain bit for bit."""
    before = decode_chain()
    _, chain_vm = cpu_vm(before)
    _, fused_vm = cpu_vm(fuse_decode_attention(before, ["decode"], parallel_from=20))
    for past in (0, 14, 15, 18, 19, 20, 31, 32, MAX_CONTEXT - 1):  # positions read: past + 1
        args = [tvm.runtime.tensor(a) for a in inputs(1, past)]
        np.testing.assert_array_equal(fused_vm["decode"](*args).numpy(), chain_vm["decode"](*args).numpy(),
                                      err_msg=f"{past + 1} positions")
