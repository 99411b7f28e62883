"""The emulated arm64 device: set-up time from an empty cache, and the built-in CNN's latency on
onnxruntime, TVM on this host and TVM on the emulated device (W8A8 and integer-only), with
ratios to onnxruntime in the same run. Emulated times measure qemu, not an Arm core: compare
them with each other only.

    python benchmarks/runtime_device.py [--fresh] [--batch 16] [--repeat 30]

``--fresh`` prepares the device in an empty cache folder (packages already installed by apt
stay installed) and reports how long that took. A device this script started is stopped at
the end; one already running is used and left running.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import edgeq  # noqa: E402
from _results import append_results, markdown_table  # noqa: E402
from edgeq.models import digits_data, load_digits_cnn  # noqa: E402
from edgeq.passes.integerize import export_integer  # noqa: E402
from edgeq.runtime import device as dev  # noqa: E402
from edgeq.runtime.executors import OrtExecutor, TvmExecutor  # noqa: E402
from edgeq.runtime.profile import latency  # noqa: E402
from edgeq.runtime.rpc import RpcExecutor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="edgeq-cache-") if args.fresh else None
    if cache:
        os.environ["XDG_CACHE_HOME"] = cache
    running = dev.device_status("arm64")
    start = time.perf_counter()
    state = running or dev.start_device("arm64", port=9290)
    setup_s = time.perf_counter() - start
    try:
        data = digits_data()
        model = load_digits_cnn()
        x = [data.x_test[: args.batch].numpy()]
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            w8a8 = edgeq.export(edgeq.quantize(model, "w8a8", calib=data.x_train[:512]), data.x_test[:1], Path(tmp) / "w8a8.onnx")
            dyadic = edgeq.quantize(model, "w8a8-dyadic", calib=data.x_train[:512])
            integer = export_integer(dyadic, data.x_test[:1], Path(tmp) / "int.onnx")
            for label, path in (("W8A8 (QDQ)", w8a8), ("integer-only (w8a8-dyadic)", integer)):
                host = edgeq.compile(path, target="cpu", out_dir=tmp)
                arm = edgeq.compile(path, target="arm64", out_dir=tmp)
                lats = [latency(OrtExecutor(path, threads=1), x, 5, args.repeat), latency(TvmExecutor(host.path), x, 5, args.repeat)]
                remote = RpcExecutor(arm.path, state.url)
                lats.append(latency(remote, x, 3, args.repeat))
                remote.close()
                base = lats[0].median_ms
                for lat in lats:
                    rows.append([label, lat.executor, f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.median_ms / base:.1f}x"])
    finally:
        if running is None:
            dev.stop_device("arm64")
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    table = markdown_table(["model", "executor", "median ms", "p90 ms", "vs onnxruntime"], rows)
    print(table)
    if running:
        setup = "device already running (set-up not measured)"
    else:
        setup = f"device set-up {'from an empty cache' if cache else '(cache warm)'}: {setup_s:.1f} s (includes starting the server)"
    print(setup)
    append_results(f"Emulated arm64 device: set-up and CNN latency (batch {args.batch})", table,
                   notes=f"{setup}. onnxruntime 1 thread; TVM here: the `cpu` target; the device: qemu-user "
                         "emulating aarch64 (times are emulation, not an Arm core).")


if __name__ == "__main__":
    main()
