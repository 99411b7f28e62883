"""The int8-activation kernel alone: this tree's ``targets/int8_lowbit.py`` against the same
module at an earlier git revision and onnxruntime MatMulNBits accuracy level 4, one process,
PrimFuncs called directly (no Relax VM), timed in turns. Reports medians, 90th percentiles and
minima: a kernel's tail is where a late or descheduled pool thread shows.

    nice -n 10 .venv/bin/python benchmarks/int8_kernel_turns.py --baseline HEAD~1 [--threads 2] [--rounds 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, cpu_flags, markdown_table  # noqa: E402
from compiled_speed import samples_in_turns  # noqa: E402
from int8_gemv import DOT_PRODUCT_FLAGS, SHAPES, matmulnbits_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def module_at(revision: str, tmp: Path):
    """``targets/int8_lowbit.py`` as it was at ``revision`` (TVMScript reads its source: a file)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:targets/int8_lowbit.py"],
                            capture_output=True, text=True, check=True).stdout
    path = tmp / "int8_lowbit_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("int8_lowbit_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel(module, target, isa, k, n, group, bits, rows):
    """The module's int8 kernel for X [rows, K] · W [N, K], float32 scales, uint8 zero points."""
    import tvm
    from tvm import te

    from edgeq.targets.lower_lowbit import packed_linear_te

    x = te.placeholder((rows, k), "float32", "x")
    qweight = te.placeholder((n, k * bits // 8), "uint8", "qweight")
    scales = te.placeholder((n, k // group), "float32", "scales")
    zeros = te.placeholder((n, k // group), "uint8", "zeros")
    func = te.create_prim_func([x, qweight, scales, zeros, packed_linear_te(x, qweight, scales, zeros, None, bits=bits, group_size=group)])
    built = module.int8_kernel(func, bits, group, isa, module.vector_bytes(isa, bits, group)).with_attr("global_symbol", "kernel")
    return tvm.tirx.build(built, target=target)["kernel"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="HEAD~1", help="git revision of targets/int8_lowbit.py to compare with")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--shapes", help="comma-separated indices into int8_gemv.SHAPES (default all)")
    ap.add_argument("--no-append", action="store_true", help="print only; RESULTS.md untouched")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    import torch
    import tvm
    import onnx

    from edgeq.maths.packing import pack
    from edgeq.runtime.ort import ort_session
    from edgeq.targets import get_target
    from edgeq.targets import int8_lowbit

    target = get_target("cpu").tvm()
    isa = int8_lowbit.dot_isa(target)
    if isa is None:
        sys.exit("this host has no byte dot product: there is no int8 kernel to time")
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    peers = ("baseline", "this tree", "ORT L4")
    table_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = module_at(args.baseline, Path(tmp))
        for label, k, n, group, bits in shapes:
            rng = np.random.default_rng(0)
            q = rng.integers(0, 2**bits, (n, k))
            zero = rng.integers(0, 2**bits, (n, k // group))
            scale = rng.uniform(0.005, 0.02, (n, k // group)).astype(np.float32)
            x = rng.normal(size=(args.rows, k)).astype(np.float32)
            dev = tvm.cpu()
            inputs = [tvm.runtime.tensor(a, dev) for a in (x, pack(torch.from_numpy(q), bits).numpy(), scale, zero.astype(np.uint8))]
            out = tvm.runtime.tensor(np.zeros((args.rows, n), np.float32), dev)
            fns, results = {}, {}
            for name, module in (("baseline", baseline), ("this tree", int8_lowbit)):
                fn = kernel(module, target, isa, k, n, group, bits, args.rows)
                fns[name] = lambda fn=fn: fn(*inputs, out)
                fns[name]()
                results[name] = out.numpy().copy()
            assert np.array_equal(results["baseline"], results["this tree"]), f"{label}: the kernels disagree"
            path = Path(tmp) / f"{k}x{n}w{bits}.onnx"
            onnx.save(matmulnbits_model([(q, scale, zero)], group, bits, args.rows, 4), path)
            session = ort_session(str(path), accuracy_level=4, threads=args.threads)
            fns["ORT L4"] = lambda session=session: session.run(None, {"x": x})
            load = os.getloadavg()[0]
            samples = samples_in_turns(fns, warmup=3, runs=20 * args.rounds, rounds=args.rounds, pause_s=0.01)
            ms = {name: 1e3 * np.asarray(t) for name, t in samples.items()}
            med = {name: float(np.median(t)) for name, t in ms.items()}
            p90 = {name: float(np.percentile(t, 90)) for name, t in ms.items()}
            low = {name: float(np.min(t)) for name, t in ms.items()}
            row = [f"{label} g{group}", bits, *[f"{med[p]:.4f} / {p90[p]:.4f} / {low[p]:.4f}" for p in peers]]
            row += [f"{med['ORT L4'] / med[p]:.2f}× / {low['ORT L4'] / low[p]:.2f}×" for p in peers[:2]]
            table_rows.append([*row, f"{load:.1f}"])
            print(table_rows[-1], flush=True)
    headers = ["shape", "bits", *[f"{p} ms median / p90 / min" for p in peers],
               "ORT L4 / baseline (median / min)", "ORT L4 / this tree (median / min)", "load avg (1 min)"]
    table = markdown_table(headers, table_rows)
    print(table)
    notes = (f"{args.rows} row(s), {args.threads} threads (TVM_NUM_THREADS, onnxruntime intra-op), CPU flags: {cpu_flags(DOT_PRODUCT_FLAGS)}; "
             f"int8 kernel {isa}; baseline = targets/int8_lowbit.py at `{args.baseline}`. PrimFuncs called directly "
             f"(onnxruntime through session.run: a few µs more per call), {args.rounds} turns of 3 warm-up and 20 timed "
             "calls per peer after 10 ms of sleep. The two edgeq kernels' outputs are checked equal bit for bit. "
             "The machine is shared (2 cores): compare within a row.")
    if not args.no_append:
        append_results("Int8 kernel alone, interleaved with its baseline and onnxruntime level 4", table, notes)


if __name__ == "__main__":
    main()
