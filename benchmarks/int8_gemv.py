"""Int8-activation packed GEMV (and the 128-row GEMM of prefill): edgeq's float-activation kernel,
its int8-activation kernel (``act_bits=8``) and onnxruntime MatMulNBits at accuracy levels 0 and 4,
timed in turns in one run, 1×K·K×N at 4096² and SmolLM2-135M's shapes (q/o, k/v, gate/up, down
and the tied 49152×576 lm_head at 4 and 8 bits). Ratios are to MatMulNBits level 4 (int8
activations too: the goal of issue #19 is edgeq int8 ≥ 1.0× it).

    nice -n 10 .venv/bin/python benchmarks/int8_gemv.py [--threads 2] [--rows 1] [--rows 128] [--cold]

``--cold``: each model holds enough copies of the shape's weights (different values, one linear
each on the same X) to exceed the last-level cache several times over, so that every call streams
its weights from DRAM as the decode step does (~77 MB of weights per token against a 32 MB L3);
times are per linear (the call's time over the copies), edgeq int8 against onnxruntime level 4 only.
The scales are float16 values (as edgeq's quantizers store them; the artifacts keep them float16,
onnxruntime's float32 input takes float32 scales).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, cpu_flags, markdown_table  # noqa: E402
from compiled_speed import samples_in_turns  # noqa: E402

# (label, K, N, group, bits): SmolLM2-135M q/o 576→576, k/v 576→192, gate/up 576→1536, down 1536→576,
# lm_head 576→49152 (tied with the embedding); g64 where 128 does not divide K
SHAPES = [("4096→4096", 4096, 4096, 128, 4), ("q/o 576→576", 576, 576, 64, 4), ("k/v 576→192", 576, 192, 64, 4),
          ("gate/up 576→1536", 576, 1536, 64, 4), ("down 1536→576", 1536, 576, 128, 4),
          ("lm_head 576→49152", 576, 49152, 64, 4), ("lm_head 576→49152", 576, 49152, 64, 8)]


# --cold: weight bytes per model at least (the host's L3 is 32 MB), and at most this many copies
COLD_BYTES = 96 * 2**20
COLD_MAX_COPIES = 512


def copy_input(c: int) -> str:
    return f"x{c}" if c else "x"


def dq_matmul_model(weights, group: int, bits: int, rows: int) -> onnx.ModelProto:
    """Y_c = X_c @ DequantizeLinear(W_c [K, N] blocked along K) for each (q [N, K], scale, zero) in
    ``weights``: what edgeq compiles. One input per copy (x, x1, x2, ...): linears that read the
    same input would be merged into one (merge_packed_linears), which the decode step does not."""
    import ml_dtypes

    kind = ml_dtypes.uint4 if bits == 4 else np.uint8
    n, k = weights[0][0].shape
    inits, nodes, inputs, outputs = [], [], [], []
    for c, (q, scale, zero) in enumerate(weights):
        inits += [numpy_helper.from_array(q.T.astype(kind), f"w{c}"), numpy_helper.from_array(scale.T.copy(), f"s{c}"),
                  numpy_helper.from_array(zero.T.astype(kind), f"z{c}")]
        nodes += [helper.make_node("DequantizeLinear", [f"w{c}", f"s{c}", f"z{c}"], [f"wf{c}"], axis=0, block_size=group),
                  helper.make_node("MatMul", [copy_input(c), f"wf{c}"], [f"y{c}"])]
        inputs.append(helper.make_tensor_value_info(copy_input(c), TensorProto.FLOAT, [rows, k]))
        outputs.append(helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, [rows, n]))
    graph = helper.make_graph(nodes, "linear", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def matmulnbits_model(weights, group: int, bits: int, rows: int, level: int) -> onnx.ModelProto:
    """``com.microsoft.MatMulNBits`` (bits 4 or 8) with ``accuracy_level``, one node per (q [N, K],
    scale, zero) in ``weights``, each with its own input and output (as ``dq_matmul_model``): B is
    [N, K/group, group·bits/8] low bits first, zero points packed the same way per row."""
    n, k = weights[0][0].shape
    blocks = k // group
    per_byte = 8 // bits

    def pack_rows(values):  # [N, L] -> [N, ceil(L / per_byte)] bytes, low bits first
        width = -(-values.shape[1] // per_byte) * per_byte
        padded = np.zeros((values.shape[0], width), np.uint8)
        padded[:, :values.shape[1]] = values
        return sum((padded[:, h::per_byte] << (h * bits)) for h in range(per_byte)).astype(np.uint8)

    inits, nodes, inputs, outputs = [], [], [], []
    for c, (qc, sc, zc) in enumerate(weights):
        suffix = str(c) if c else ""
        b = pack_rows(qc.astype(np.uint8)).reshape(n, blocks, group * bits // 8)
        inits += [numpy_helper.from_array(b, f"b{suffix}"), numpy_helper.from_array(sc.astype(np.float32), f"s{suffix}"),
                  numpy_helper.from_array(pack_rows(zc.astype(np.uint8)), f"z{suffix}")]
        nodes.append(helper.make_node("MatMulNBits", [copy_input(c), f"b{suffix}", f"s{suffix}", f"z{suffix}"], [f"y{suffix}"],
                                      domain="com.microsoft", K=k, N=n, bits=bits, block_size=group, accuracy_level=level))
        inputs.append(helper.make_tensor_value_info(copy_input(c), TensorProto.FLOAT, [rows, k]))
        outputs.append(helper.make_tensor_value_info(f"y{suffix}", TensorProto.FLOAT, [rows, n]))
    graph = helper.make_graph(nodes, "matmulnbits", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


PEERS = ("edgeq float act", "edgeq int8 act", "ORT level 0", "ORT level 4")


def weight_bytes(k: int, n: int, group: int, bits: int) -> int:
    """One copy of a shape's weights as edgeq stores them: packed values, float16 scales, byte zero points."""
    return n * k * bits // 8 + 3 * n * (k // group)


def cold_copies(k: int, n: int, group: int, bits: int) -> int:
    """Copies of a shape's weights that make at least COLD_BYTES, at most COLD_MAX_COPIES."""
    return min(COLD_MAX_COPIES, -(-COLD_BYTES // weight_bytes(k, n, group, bits)))


def shape_times(label, k, n, group, bits, rows, threads, tmp: Path, cold: bool = False) -> tuple[dict, dict, dict, dict, float, int]:
    """Median, 10th percentile and minimum ms of each peer on one shape (per linear: a cold
    call's time over its copies), max error of each vs the float reference, load, copies. On a
    shared machine the minima are the kernels' own time; the medians include waits for a
    descheduled pool thread."""
    import tvm

    from edgeq.runtime.executors import TvmExecutor
    from edgeq.runtime.ort import ort_session
    from edgeq.targets import compile as compile_model

    rng = np.random.default_rng(0)
    copies = cold_copies(k, n, group, bits) if cold else 1
    def draw():  # (q, scale, zero), drawn q, zero, scale
        q = rng.integers(0, 2**bits, (n, k), dtype=np.uint8)
        zero = rng.integers(0, 2**bits, (n, k // group), dtype=np.uint8)
        return q, rng.uniform(0.005, 0.02, (n, k // group)).astype(np.float16).astype(np.float32), zero

    weights = [draw() for _ in range(copies)]
    q, scale, zero = weights[0]
    w = ((q.astype(np.float32) - np.repeat(zero, group, 1)) * np.repeat(scale, group, 1)).astype(np.float32)
    x = rng.normal(size=(rows, k)).astype(np.float32)
    reference = x.astype(np.float64) @ w.T
    stem = f"{k}x{n}w{bits}r{rows}c{copies}"
    dq = tmp / f"{stem}.onnx"
    onnx.save(dq_matmul_model(weights, group, bits, rows), dq)
    fns, outputs = {}, {}
    edgeq_peers = (("edgeq int8 act", 8),) if cold else (("edgeq float act", 32), ("edgeq int8 act", 8))
    for name, act_bits in edgeq_peers:
        art = compile_model(dq, target="cpu", out_dir=tmp, name=f"{stem}a{act_bits}", act_bits=act_bits)
        executor = TvmExecutor(art.path)
        x_tvm = tvm.runtime.tensor(x, executor.device)
        main = executor.vm["main"]
        fns[name] = lambda main=main, xs=[x_tvm] * copies: main(*xs)
        outputs[name] = executor.run([x] * copies)[0]
    for level in (4,) if cold else (0, 4):
        path = tmp / f"{stem}l{level}.onnx"
        onnx.save(matmulnbits_model(weights, group, bits, rows, level), path)
        session = ort_session(str(path), accuracy_level=level, threads=threads)
        feeds = {copy_input(c): x for c in range(copies)}
        fns[f"ORT level {level}"] = lambda s=session, feeds=feeds: s.run(None, feeds)
        outputs[f"ORT level {level}"] = session.run(None, feeds)[0]
    del weights, q, scale, zero
    load = os.getloadavg()[0]
    samples = samples_in_turns(fns, warmup=5, runs=120, rounds=8, pause_s=0.05)
    times = {name: 1e3 * float(np.median(t)) / copies for name, t in samples.items()}
    p10 = {name: 1e3 * float(np.percentile(t, 10)) / copies for name, t in samples.items()}
    minima = {name: 1e3 * float(np.min(t)) / copies for name, t in samples.items()}
    scale_out = np.abs(reference).max()
    errors = {name: float(np.abs(out - reference).max() / scale_out) for name, out in outputs.items()}
    return times, p10, minima, errors, load, copies


# the flags the int8 kernels choose their instructions by, as the RESULTS rows record them
DOT_PRODUCT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, action="append", help="rows of X (1: decode GEMV; 128: prefill GEMM); repeatable")
    ap.add_argument("--shapes", help="comma-separated indices into SHAPES (default all)")
    ap.add_argument("--cold", action="store_true", help="weights streamed from DRAM (copies beyond the L3), int8 vs ORT L4")
    ap.add_argument("--no-append", action="store_true", help="print only; RESULTS.md untouched")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    from edgeq.targets import get_target
    from edgeq.targets.int8_lowbit import dot_isa

    isa = dot_isa(get_target("cpu").tvm())
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    peers = ("edgeq int8 act", "ORT level 4") if args.cold else PEERS
    if args.cold:
        headers = ["shape", "rows", "bits", "copies (MB)", "edgeq int8 ms median / p10 / min", "ORT L4 ms median / p10 / min",
                   "int8 / ORT L4 median / p10 / min", "edgeq int8 GB/s (p10)", "load avg (1 min)"]
    else:
        headers = ["shape", "rows", "bits", *[f"{p} ms" for p in PEERS], "int8 / ORT L4", "float / ORT L4", "int8 / float",
                   "int8 min ms", "ORT L4 min ms", "int8 / ORT L4 (minima)", "int8 p10 ms", "ORT L4 p10 ms", "load avg (1 min)"]
    table_rows, error_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows or [1]:
            for label, k, n, group, bits in shapes:
                times, p10, minima, errors, load, copies = shape_times(label, k, n, group, bits, rows, args.threads, Path(tmp),
                                                                       cold=args.cold)
                i8, l4 = "edgeq int8 act", "ORT level 4"
                if args.cold:
                    nbytes = weight_bytes(k, n, group, bits)
                    table_rows.append([f"{label} g{group}", rows, bits, f"{copies} ({copies * nbytes / 1e6:.0f})",
                                       f"{times[i8]:.4f} / {p10[i8]:.4f} / {minima[i8]:.4f}",
                                       f"{times[l4]:.4f} / {p10[l4]:.4f} / {minima[l4]:.4f}",
                                       f"{times[l4] / times[i8]:.2f}× / {p10[l4] / p10[i8]:.2f}× / {minima[l4] / minima[i8]:.2f}×",
                                       f"{nbytes / p10[i8] / 1e6:.1f}", f"{load:.1f}"])
                else:
                    table_rows.append([f"{label} g{group}", rows, bits, *[f"{times[p]:.3f}" for p in PEERS],
                                       f"{times[l4] / times[i8]:.2f}×", f"{times[l4] / times['edgeq float act']:.2f}×",
                                       f"{times['edgeq float act'] / times[i8]:.2f}×", f"{minima[i8]:.4f}",
                                       f"{minima[l4]:.4f}", f"{minima[l4] / minima[i8]:.2f}×", f"{p10[i8]:.4f}",
                                       f"{p10[l4]:.4f}", f"{load:.1f}"])
                error_rows.append(f"{label} w{bits} rows {rows}: " + ", ".join(f"{p} {errors[p]:.1e}" for p in peers))
                print(table_rows[-1], flush=True)
    table = markdown_table(headers, table_rows)
    print(table)
    cold = (f" Cold: each model holds enough copies of the shape's weights (one linear each, different values, "
            f"at least {COLD_BYTES >> 20} MiB, at most {COLD_MAX_COPIES} copies; the L3 is 32 MB) that every call "
            "streams them from DRAM as the decode step does; times per linear (a call's time over its copies, "
            "each copy with its own input, the same array, so that they are not merged into one linear, and its own "
            "output allocated by the runtime as in a model); GB/s = one copy's weight bytes "
            "(values, float16 scales, byte zero points) over edgeq's p10 time." if args.cold else "")
    notes = (f"{args.threads} threads (TVM_NUM_THREADS, onnxruntime intra-op), CPU flags: {cpu_flags(DOT_PRODUCT_FLAGS)}; edgeq's int8 "
             f"kernel here uses {isa or 'nothing (float kernel kept)'}. Ratios >1 mean edgeq is faster. Peers timed "
             "in turns (8 rounds of 15 calls after 50 ms of sleep and 5 warm-up calls each; median, 10th percentile "
             "and minimum over the 120 calls, the minimum the kernel's time when no pool thread was descheduled), "
             "each call from Python (TVM VM call / onnxruntime session.run: a few µs of overhead on both). Scales "
             "are float16 values (edgeq's artifacts store them float16, onnxruntime takes float32)." + cold +
             " Load average: the machine is shared with other engineers' jobs (2 cores); compare ratios within a row "
             "only. Max error vs the float reference, of the output's scale: " + "; ".join(error_rows) + ".")
    title = ("Int8-activation packed GEMV, weights streamed from DRAM (cold), vs onnxruntime MatMulNBits level 4"
             if args.cold else "Int8-activation packed GEMV/GEMM vs onnxruntime MatMulNBits (levels 0 and 4)")
    if not args.no_append:
        append_results(title, table, notes)


if __name__ == "__main__":
    main()
