"""What ``edgeq tune`` buys over edgeq's default CPU schedules: the built-in digits CNN (float32,
batch 450) tuned with meta_schedule for a time budget, compiled with and without the database,
both timed against onnxruntime in the same run.

    .venv/bin/python benchmarks/tuning.py [--budget 300 --trials 16 --batch 450]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, print_and_record  # noqa: E402
from compiled_speed import timed_in_turns  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=300.0, help="tuning budget in seconds")
    ap.add_argument("--trials", type=int, default=16, help="measured candidates per kernel")
    ap.add_argument("--batch", type=int, default=450)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import edgeq
    from edgeq.models import digits_data, load_digits_cnn
    from edgeq.runtime.executors import TvmExecutor
    from edgeq.runtime.ort import ort_session
    from edgeq.targets.tune import tune

    data, model = digits_data(), load_digits_cnn()
    x = np.ascontiguousarray(data.x_test[: args.batch].numpy())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = edgeq.export(model, data.x_test[:1], tmp / "digits_f32.onnx")
        dims = {"batch": args.batch}
        result = tune(path, tmp / "digits.tuning", budget_s=args.budget, specialize=dims, trials_per_kernel=args.trials)
        default = edgeq.compile(path, target="cpu", out_dir=tmp, name="default", specialize=dims)
        tuned = edgeq.compile(path, target="cpu", out_dir=tmp, name="tuned", specialize=dims, tuning_db=result.db_dir)
        session = ort_session(str(path))
        name = session.get_inputs()[0].name
        expect = session.run(None, {name: x})[0]
        runners = {"default": TvmExecutor(default.path), "tuned": TvmExecutor(tuned.path)}
        errors = {k: float(np.abs(r.run([x])[0] - expect).max()) for k, r in runners.items()}
        times = timed_in_turns({"default": lambda: runners["default"].run([x]), "tuned": lambda: runners["tuned"].run([x]),
                                "ort": lambda: session.run(None, {name: x})}, runs=30)
    rows = [[label, f"{times[key]:.3f}", f"{times['ort'] / times[key]:.2f}×", f"{errors[key]:.1e}"]
            for label, key in (("TVM, edgeq default schedules", "default"), ("TVM, tuned (+ defaults elsewhere)", "tuned"))]
    rows.append(["onnxruntime", f"{times['ort']:.3f}", "1.00×", "-"])
    table = markdown_table(["digits CNN float32, batch " + str(args.batch), "ms", "speed vs onnxruntime", "max |Δ| vs ORT"], rows)
    notes = (f"`edgeq tune --budget {args.budget:.0f} --trials {args.trials}`: {len(result.tuned)}/{len(result.kernels)} "
             f"distinct kernels tuned in {result.seconds:.0f} s; tuned vs default: "
             f"{times['default'] / times['tuned']:.2f}× speed. Median wall-clock, same run, peers timed in turns.")
    print_and_record("Tuning: edgeq tune (meta_schedule) vs the default CPU schedules", table, notes,
                     record=not args.no_record)


if __name__ == "__main__":
    main()
