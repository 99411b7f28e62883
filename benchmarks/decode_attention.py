"""Decode attention at one query row, SmolLM2-135M's shapes (9 query heads over 3 kv heads,
head_dim 64, a ``--max-context`` cache): the chain ``gqa_attention`` leaves (scores, mask add,
softmax, NaN clean-up, values: five kernels through the Relax VM) against ``decode_attention``'s
one kernel, its kv heads on one thread or on the thread pool. Each a Relax function compiled with
edgeq's CPU pipeline for this host, timed through the VM in one process, rounds interleaved, minima
and medians (the machine may be shared); the outputs are checked equal bit for bit. ``--baseline``
adds the fused kernel of another ``decode_attention.py`` (one thread), e.g. main's:

    git show main:targets/decode_attention.py > /tmp/main_decode_attention.py
    python benchmarks/decode_attention.py --past 64,128,256,512,1024 --rounds 8 --baseline /tmp/main_decode_attention.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, tirx

from edgeq.targets import gqa_attention as gqa
from edgeq.targets.compile import default_pipeline
from edgeq.targets.decode_attention import PARALLEL_FROM, fuse_decode_attention
from edgeq.targets.registry import host_cpu_target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import cpu_flags, markdown_table, print_and_record  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
SCALE = HEAD_DIM ** -0.5


def chain(max_context: int) -> tvm.IRModule:
    """``decode(q, k, v, mask, cache_length)`` in the form the generation module's decode has."""
    past = tirx.Var("past", "int64")
    q = relax.Var("q", relax.TensorType((1, HEADS, 1, HEAD_DIM), "float32"))
    k = relax.Var("k", relax.TensorType((1, KV_HEADS, max_context, HEAD_DIM), "float32"))
    v = relax.Var("v", relax.TensorType((1, KV_HEADS, max_context, HEAD_DIM), "float32"))
    mask = relax.Var("mask", relax.TensorType((1, 1, 1, past + 1), "float32"))
    length = relax.Var("cache_length", relax.TensorType((past,), "int8"))
    bb, op = relax.BlockBuilder(), relax.op
    with bb.function("decode", [q, k, v, mask, length], {"tir_var_upper_bound": {"past": max_context}}):
        with bb.dataflow():
            scores = bb.emit(bb.call_te(gqa.scores_te, q, k, SCALE, 1.0, past + 1, primfunc_name_hint="gqa_scores",
                                        primfunc_attrs={"op_pattern": 8, gqa.KERNEL_ATTR: "scores",
                                                        gqa.SCALES_ATTR: [SCALE, 1.0]}))
            probs = bb.emit(op.nn.softmax(bb.emit(op.add(scores, mask)), axis=-1))
            probs = bb.emit(op.where(op.isnan(probs), relax.const(0.0, "float32"), probs))
            out = bb.emit_output(bb.call_te(gqa.values_te, probs, v, primfunc_name_hint="gqa_values",
                                            primfunc_attrs={"op_pattern": 8, gqa.KERNEL_ATTR: "values"}))
        bb.emit_func_output(out)
    return bb.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--past", default="64,128,256,512,1024", help="comma-separated cache lengths")
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--baseline", type=Path, help="another decode_attention.py whose fused kernel (1 thread) is timed too")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    spec = host_cpu_target()
    dev = tvm.cpu()
    before = chain(args.max_context)
    variants = {"5 kernels": before,
                "fused, 1 thread": fuse_decode_attention(before, ["decode"], parallel_from=args.max_context + 1),
                "fused, parallel": fuse_decode_attention(before, ["decode"], parallel_from=1)}
    if args.baseline:
        spec_of = importlib.util.spec_from_file_location("baseline_decode_attention", args.baseline)
        baseline = importlib.util.module_from_spec(spec_of)
        spec_of.loader.exec_module(baseline)
        variants["baseline fused, 1 thread"] = baseline.fuse_decode_attention(before, ["decode"], parallel_from=args.max_context + 1)
    vms = {name: relax.VirtualMachine(tvm.compile(default_pipeline(mod, spec)[0], target=spec.tvm(), relax_pipeline=None), dev)
           for name, mod in variants.items()}
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, HEADS, 1, HEAD_DIM), dtype="float32")
    k, v = (rng.standard_normal((1, KV_HEADS, args.max_context, HEAD_DIM), dtype="float32") for _ in range(2))
    rows = []
    for past in map(int, args.past.split(",")):
        call = [tvm.runtime.tensor(x, dev) for x in (q, k, v, np.zeros((1, 1, 1, past + 1), np.float32),
                                                       np.zeros(past, np.int8))]
        outs = {name: vm["decode"](*call).numpy() for name, vm in vms.items()}
        for name, out in outs.items():
            np.testing.assert_array_equal(out, outs["5 kernels"], err_msg=name)
        timers = {name: vm.time_evaluator("decode", dev, number=100, repeat=5) for name, vm in vms.items()}
        times = {name: [] for name in vms}
        for r in range(args.rounds):
            for name in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
                times[name] += [t * 1e6 for t in timers[name](*call).results]
        best = {name: min(t) for name, t in times.items()}
        middle = {name: statistics.median(t) for name, t in times.items()}
        base = best["5 kernels"]
        rows.append([past + 1, *(f"{best[n]:.2f} ({base / best[n]:.2f}x) / {middle[n]:.2f}" for n in vms)])
    table = markdown_table(["cache positions read", *(f"{n} us min (x 5 kernels) / median" for n in vms)], rows)
    notes = (f"Target {spec.description}; CPU flags: {cpu_flags()}; 2 threads unless TVM_NUM_THREADS says otherwise; "
             f"max_context {args.max_context}; PARALLEL_FROM {PARALLEL_FROM}; "
             f"{args.rounds} rounds x 5 repeats x 100 calls, the order alternating per round; "
             f"load average (1 min) {open('/proc/loadavg').read().split()[0]}.")
    print_and_record("Decode attention at one query row: five kernels against one", table, notes, record=not args.no_append)


if __name__ == "__main__":
    main()
