"""Size TVM's CPU thread pool to the machine's physical cores.

TVM creates its pool once per process, sized by ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``),
else by half the logical CPUs on x86 on the assumption that every core has two SMT threads. On a
machine without SMT (most VMs and CI runners) that halves the cores: on a 2-core host every TVM
kernel ran on one thread while onnxruntime and PyTorch used two. ``import edgeq`` sets the
variable (unless the user has) to the count onnxruntime uses by default: the physical cores.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "TVM_NUM_THREADS"


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no sysfs topology (not Linux, some containers): one core per CPU
            return len(cpus)
    return len(cores) or len(cpus)


def default_tvm_threads() -> None:
    """Set ``TVM_NUM_THREADS`` to the physical cores unless the user set it (or ``OMP_NUM_THREADS``):
    it must be in place before TVM's pool starts, which is at the first parallel kernel."""
    if ENV not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ[ENV] = str(physical_cores())


def configure_tvm_threads(threads: int | None = None) -> int:
    """Run TVM kernels in this process on ``threads`` threads (default: the pool's size). The pool
    cannot grow past the size it started with, so a larger request is capped there."""
    import tvm  # noqa: F401  (loads the runtime that registers the thread-pool functions)
    import tvm_ffi

    default_tvm_threads()
    ceiling = int(os.environ.get(ENV) or os.environ["OMP_NUM_THREADS"])
    threads = min(threads or ceiling, ceiling)
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, threads)  # mode 1: the fastest cores first
    return threads
