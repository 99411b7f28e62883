"""W4 g128 GEMV, 1×K · K×N: edgeq's TVM packed kernel against onnxruntime's MatMulNBits
(accuracy levels 0 and 4), onnxruntime float32 MatMul and PyTorch float32, with the
memory-bandwidth bound (weight bytes / measured copy bandwidth). One run, ratios to onnxruntime
MatMulNBits at level 0.

    .venv/bin/python benchmarks/lowbit_gemv.py [--k 4096 --n 4096 --threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402

GROUP = 128


def dq_matmul_model(w_q, scale, zero, k, n) -> onnx.ModelProto:
    """Y = X @ DequantizeLinear(uint4 W [K, N], blocked along K): onnxruntime fuses it into
    MatMulNBits; edgeq's importer packs it into its low-bit kernel."""
    inits = [numpy_helper.from_array(w_q.astype(ml_dtypes.uint4), "w"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(zero.astype(ml_dtypes.uint4), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0, block_size=GROUP),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def float_matmul_model(w, k, n) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv_f32",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def best_ms(fn, warmup: int = 5, runs: int = 30) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def copy_bandwidth_gbs(nbytes: int = 1 << 28) -> float:
    """Read + write bytes per second of a large numpy copy (the memory roofline)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    ms = best_ms(lambda: np.copyto(dst, src), warmup=2, runs=5)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    k, n = args.k, args.n
    torch.set_num_threads(args.threads)

    from edgeq.runtime.executors import TvmExecutor
    from edgeq.runtime.ort import ort_session
    from edgeq.targets import compile as compile_model

    rng = np.random.default_rng(0)
    w_q = rng.integers(0, 16, (k, n))
    zero = rng.integers(0, 16, (k // GROUP, n))
    scale = rng.uniform(0.005, 0.02, (k // GROUP, n)).astype(np.float32)
    w = ((w_q - np.repeat(zero, GROUP, 0)) * np.repeat(scale, GROUP, 0)).astype(np.float32)
    x = rng.normal(size=(1, k)).astype(np.float32)
    packed_bytes = k * n // 2 + scale.nbytes + zero.size // 2

    with tempfile.TemporaryDirectory() as tmp:
        q_path, f_path = Path(tmp) / "gemv_w4.onnx", Path(tmp) / "gemv_f32.onnx"
        onnx.save(dq_matmul_model(w_q, scale, zero, k, n), q_path)
        onnx.save(float_matmul_model(w, k, n), f_path)
        art = compile_model(q_path, target="cpu", out_dir=tmp)
        tvm_exec = TvmExecutor(art.path)
        import tvm

        x_tvm = tvm.runtime.tensor(x, tvm_exec.device)
        timer = tvm_exec.vm.time_evaluator("main", tvm_exec.device, number=10, repeat=5)
        tvm_ms = 1e3 * timer(x_tvm).median
        reference = x @ w
        got = tvm_exec.run([x])[0]
        rows = []
        sessions = {f"onnxruntime MatMulNBits, accuracy level {lvl}": ort_session(str(q_path), accuracy_level=lvl, threads=args.threads)
                    for lvl in (0, 4)}
        sessions["onnxruntime float32 MatMul"] = ort_session(str(f_path), threads=args.threads)
        times = {name: best_ms(lambda s=s: s.run(None, {"x": x})) for name, s in sessions.items()}
        wt = torch.from_numpy(w.T.copy())
        xt = torch.from_numpy(x)
        times["PyTorch float32 F.linear"] = best_ms(lambda: torch.nn.functional.linear(xt, wt))
        times["edgeq TVM W4 packed kernel"] = tvm_ms
        bandwidth = copy_bandwidth_gbs()
        bound_ms = packed_bytes / (bandwidth * 1e9) * 1e3
        float_bound_ms = w.nbytes / (bandwidth * 1e9) * 1e3
        base = times["onnxruntime MatMulNBits, accuracy level 0"]
        for name, ms in times.items():
            bound = float_bound_ms if "float32" in name else bound_ms
            rows.append([name, f"{ms:.3f}", f"{base / ms:.2f}×", f"{bound / ms:.2f}"])
        rows.append([f"bandwidth bound (W4 {packed_bytes / 2**20:.1f} MiB at {bandwidth:.1f} GB/s)", f"{bound_ms:.3f}", "", "1.00"])
    err = float(np.abs(got - reference).max() / np.abs(reference).max())
    headers = ["kernel", "median ms", "speed vs ORT level 0", "fraction of roofline"]
    table = markdown_table(headers, rows)
    print(table)
    notes = (f"1×{k}·{k}×{n}, W4 (uint4, zero points) group {GROUP}, {args.threads} threads. TVM output vs float "
             f"reference: max error {err:.1e} of the output's scale. The roofline column is bound / time (weights "
             "read once; float32 rows against the float32 weight size). The TVM kernel is edgeq's untuned CPU "
             "schedule (targets/schedule_lowbit.py: rows in parallel, K split into 16 byte lanes, rfactor, "
             "vectorized); it does not reach MatMulNBits yet: the per-element scale/zero-point loads and int-to-float "
             "conversions stay in the inner loop (next step: sum x·q per group first, then apply scale and "
             "zero point once per group). The 8.6 MiB of W4 weights fit in this CPU's L3 cache across repeated "
             "runs, so a kernel can beat the DRAM copy-bandwidth bound (MatMulNBits level 4 does). The machine "
             "is shared with other jobs: compare ratios within this run only.")
    append_results("W4 g128 GEMV: TVM packed kernel vs onnxruntime MatMulNBits", table, notes)


if __name__ == "__main__":
    main()
