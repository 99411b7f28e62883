"""Decode attention kernels, the generic schedule (rows in parallel, as prefill keeps it) against
the one-row schedule ``GqaSchedule`` picks at decode, compiled for this host and timed in one
process, rounds interleaved, minima (the machine may be shared). SmolLM2-135M's shapes: 9 query
heads over 3 kv heads, head_dim 64, a 2048-position cache of which ``--past`` positions are read.

    python benchmarks/decode_attention.py --past 200 --rounds 8
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import tvm
from tvm import te, tirx

from edgeq.targets import gqa_attention as gqa
from edgeq.targets.registry import host_cpu_target
from edgeq.targets.schedules._loops import VAR_UPPER_BOUND

HEADS, KV_HEADS, HEAD_DIM, MAX_CONTEXT = 9, 3, 64, 2048


def kernels():
    """(name, PrimFunc) of decode's scores and values over a symbolic cache length ``n``."""
    n = tirx.Var("n", "int64")
    q = te.placeholder((1, HEADS, 1, HEAD_DIM), name="q")
    k = te.placeholder((1, KV_HEADS, MAX_CONTEXT, HEAD_DIM), name="k")
    probs = te.placeholder((1, HEADS, 1, n), name="probs")
    scores = te.create_prim_func([q, k, gqa.scores_te(q, k, HEAD_DIM ** -0.5, 1.0, n)])
    values = te.create_prim_func([probs, k, gqa.values_te(probs, k)])
    bound = {"n": MAX_CONTEXT}
    return [("scores", scores.with_attr(gqa.KERNEL_ATTR, "scores").with_attr(VAR_UPPER_BOUND, bound)),
            ("values", values.with_attr(gqa.KERNEL_ATTR, "values").with_attr(VAR_UPPER_BOUND, bound))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--past", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    spec = host_cpu_target()
    target = tvm.target.Target(spec.tvm_target)
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    cache = rng.standard_normal((1, KV_HEADS, MAX_CONTEXT, HEAD_DIM), dtype="float32")
    repeated = cache[0].repeat(HEADS // KV_HEADS, 0)[:, :args.past]
    q = rng.standard_normal((1, HEADS, 1, HEAD_DIM), dtype="float32")
    probs = rng.standard_normal((1, HEADS, 1, args.past), dtype="float32")
    expected = {"scores": np.einsum("hd,hpd->hp", q[0, :, 0] * HEAD_DIM ** -0.5, repeated),
                "values": np.einsum("hp,hpd->hd", probs[0, :, 0], repeated)}
    runs = {}
    for kind, func in kernels():
        first = q if kind == "scores" else probs
        for schedule, sch in (("generic", getattr(gqa, f"_schedule_{kind}")(func)),
                              ("one row", gqa.GqaSchedule().apply(func, target, False))):
            lib = tvm.compile(sch.mod, target=target)
            out = tvm.runtime.tensor(np.zeros((1, HEADS, 1, expected[kind].shape[1]), "float32"), dev)
            call = (tvm.runtime.tensor(first, dev), tvm.runtime.tensor(cache, dev), out)
            lib(*call)
            np.testing.assert_allclose(out.numpy()[0, :, 0], expected[kind], rtol=1e-4, atol=1e-4)
            runs[(kind, schedule)] = (lib.mod.time_evaluator("main", dev, number=200, repeat=5), call, [])
    for _ in range(args.rounds):
        for evaluate, call, times in runs.values():
            times.append(min(evaluate(*call).results) * 1e6)
    rows = []
    for kind in ("scores", "values"):
        old, new = (min(runs[(kind, s)][2]) for s in ("generic", "one row"))
        rows.append(f"| gqa_{kind} | {old:.2f} | {new:.2f} | {old / new:.2f}x |")
    table = ["| kernel (past %d) | generic us (min) | one row us (min) | ratio |" % args.past, "|---|---|---|---|", *rows]
    print("\n".join(table))
    with open(args.results, "a") as f:
        f.write(f"\n`python benchmarks/decode_attention.py --past {args.past} --rounds {args.rounds}` "
                f"({platform.node()}, {spec.description}, flags {' '.join(spec.features)}, "
                f"load {open('/proc/loadavg').read().split()[0]})\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
